"""STFForConditionalGeneration on tiny random models: the public API other issues rely on."""

import subprocess
import sys

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from stf_model import STFConfig, STFForConditionalGeneration, build_tiny, normalize_pixels
from stf_model.presets import preset_config

IMAGE_ID = 4  # tiny tokenizer's <image>


def prompt_ids(num_image_tokens: int, text: list[int] | None = None) -> torch.Tensor:
    text = text or [10, 11, 12]
    return torch.tensor([[1] + [IMAGE_ID] * num_image_tokens + text])


def test_image_features_shape_and_uint8_path(tiny, uint8_images):
    model, _ = tiny
    features = model.get_image_features(uint8_images)
    assert features.shape == (2, 36, 64)
    normalised = normalize_pixels(uint8_images, model.config.image_mean, model.config.image_std)
    torch.testing.assert_close(model.get_image_features(normalised), features)


@pytest.mark.parametrize("window,tokens", [(1, 144), (2, 36), (3, 16), (4, 9)])
def test_every_window_runs_end_to_end(window, tokens, uint8_images):
    model, _ = build_tiny(stf_window=window)
    assert model.get_image_features(uint8_images).shape == (2, tokens, 64)
    ids = prompt_ids(tokens)
    out = model(input_ids=ids, pixel_values=uint8_images[:1], labels=ids)
    assert out.logits.shape == (1, ids.shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(out.loss)


def test_mbtf_selects_the_configured_blocks_in_order(tiny, uint8_images):
    """The projector's input is the CLS-dropped hidden states of the configured blocks, concatenated
    in config order, computed here by a separate CLIPVisionModel holding the same weights."""
    model, _ = tiny
    layers = model.config.feature_layers
    clip = CLIPVisionModel(model.config.vision_config).eval()
    clip.load_state_dict(model.model.vision_tower.state_dict())
    pixels = normalize_pixels(uint8_images, model.config.image_mean, model.config.image_std)
    hidden = clip(pixels, output_hidden_states=True).hidden_states
    expected = torch.cat([hidden[i][:, 1:] for i in layers], dim=-1)

    seen = {}
    hook = model.model.multi_modal_projector.register_forward_hook(
        lambda mod, args, out: seen.setdefault("input", args[0])
    )
    model.get_image_features(uint8_images)
    hook.remove()
    torch.testing.assert_close(seen["input"], expected)
    assert expected.shape[-1] == 32 * len(layers)


def test_block_order_matters(uint8_images):
    a, _ = build_tiny(vision_feature_layer=[-2, 4, 3, 2])
    b, _ = build_tiny(vision_feature_layer=[2, 3, 4, -2])
    b.load_state_dict(a.state_dict())
    assert not torch.allclose(
        a.get_image_features(uint8_images), b.get_image_features(uint8_images)
    )


def test_window_1_one_block_is_llava_15(uint8_images):
    """Same weights in transformers' own LlavaForConditionalGeneration give the same logits."""
    ours, _ = build_tiny(vision_feature_layer=-2, stf_window=1)
    assert ours.model.multi_modal_projector.mbtf is None
    reference = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=ours.config.vision_config,
            text_config=ours.config.text_config,
            vision_feature_layer=-2,
            image_token_index=IMAGE_ID,
        )
    ).eval()
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=True)
    assert not missing and not unexpected
    ids = prompt_ids(144)
    pixels = normalize_pixels(uint8_images[:1], ours.config.image_mean, ours.config.image_std)
    torch.testing.assert_close(
        ours(input_ids=ids, pixel_values=uint8_images[:1]).logits,
        reference(input_ids=ids, pixel_values=pixels).logits,
    )


def test_pretrain_freezes_exactly_vision_and_llm(tiny):
    model, _ = tiny
    counts = model.set_trainable_stage("pretrain")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.multi_modal_projector.") for n in trainable)
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    assert counts["trainable"] == projector
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n for n, _ in model.named_parameters() if not n.startswith("model.multi_modal_projector.")
    }

    model.set_trainable_stage("finetune")
    for name, param in model.named_parameters():
        assert param.requires_grad == (not name.startswith("model.vision_tower.")), name
    with pytest.raises(ValueError, match="unknown training stage 'align'"):
        model.set_trainable_stage("align")


def test_pretrain_step_moves_only_the_projector(tiny, uint8_images):
    model, _ = tiny
    model.train().set_trainable_stage("pretrain")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = prompt_ids(36)
    labels = ids.clone()
    labels[:, : 1 + 36] = -100
    model(input_ids=ids, pixel_values=uint8_images[:1], labels=labels).loss.backward()
    optim.step()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param)
        assert changed == name.startswith("model.multi_modal_projector."), name


def test_a_trained_tower_trains_exactly_what_feeds_the_projector(tiny, uint8_images):
    """Every trainable parameter gets a gradient from an image batch (ZeRO reduces the same
    tensors on every rank); the tower's blocks past the deepest selected state stay frozen."""
    model, _ = tiny  # tiny: 6 tower blocks, MBTF over hidden states [-2, 4, 3, 2] -> deepest 5
    counts = model.set_trainable_parts({"projector", "llm", "vision_tower"})
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        n
        for n, _ in model.named_parameters()
        if n.startswith(
            ("model.vision_tower.encoder.layers.5.", "model.vision_tower.post_layernorm.")
        )
    }
    assert counts["frozen"] == sum(p.numel() for n, p in model.named_parameters() if n in frozen)
    model.train()
    ids = prompt_ids(36)
    labels = ids.clone()
    labels[:, : 1 + 36] = -100
    model(input_ids=ids, pixel_values=uint8_images[:1], labels=labels).loss.backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not without, without
    image_only = {id(p) for p in model.image_only_parameters()}
    model.zero_grad(set_to_none=True)
    model(input_ids=prompt_ids(0), labels=prompt_ids(0)).loss.backward()  # text only
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert (param.grad is None) == (id(param) in image_only), name
    with pytest.raises(ValueError, match="unknown model parts"):
        model.set_trainable_parts({"tower"})


def test_save_load_round_trip(tiny, uint8_images, tmp_path):
    model, _ = tiny
    ids = prompt_ids(36)
    expected = model(input_ids=ids, pixel_values=uint8_images[:1], labels=ids)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loaded in (
        STFForConditionalGeneration.from_pretrained(tmp_path),
        AutoModelForImageTextToText.from_pretrained(tmp_path),
    ):
        assert isinstance(loaded, STFForConditionalGeneration)
        got = loaded(input_ids=ids, pixel_values=uint8_images[:1], labels=ids)
        torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
        torch.testing.assert_close(got.loss, expected.loss, rtol=0, atol=0)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), STFConfig)


def test_register_makes_a_bare_import_reload_through_the_auto_classes(tiny, tmp_path):
    """``import stf_model`` alone imports no model code; ``stf_model.register()`` is what a user
    of transformers' Auto classes calls (a fresh interpreter: this one has registered already)."""
    model, _ = tiny
    model.save_pretrained(tmp_path)
    code = (
        "import stf_model\n"
        "stf_model.register()\n"
        "from transformers import AutoModelForImageTextToText\n"
        f"print(type(AutoModelForImageTextToText.from_pretrained({str(tmp_path)!r})).__name__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip().splitlines()[-1] == "STFForConditionalGeneration"


def test_generate_produces_tokens(tiny, uint8_images):
    model, _ = tiny
    ids = prompt_ids(36)
    out = model.generate(
        input_ids=ids,
        pixel_values=uint8_images[:1],
        max_new_tokens=6,
        min_new_tokens=6,
        do_sample=False,
    )
    assert out.shape == (1, ids.shape[1] + 6)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    new = out[0, ids.shape[1] :]
    assert ((new >= 0) & (new < model.config.text_config.vocab_size)).all()


def test_text_only_forward(tiny):
    model, _ = tiny
    ids = torch.tensor([[1, 10, 11, 12]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_image_token_count_mismatch_raises(tiny, uint8_images):
    model, _ = tiny
    with pytest.raises(
        ValueError, match=r"tokens 35, features 36 \(1 image\(s\) x 36 vision tokens\)"
    ):
        model(input_ids=prompt_ids(35), pixel_values=uint8_images[:1])


def test_real_shape_config_builds_on_meta():
    """The 7B shapes are consistent (no allocation: meta device)."""
    with torch.device("meta"):
        model = STFForConditionalGeneration(preset_config("llava-stf-7b"))
    projector = model.model.multi_modal_projector
    mbtf = sum(p.numel() for p in projector.mbtf.parameters())
    mlp = projector.linear_1.weight.numel() + projector.linear_1.bias.numel()
    mlp += projector.linear_2.weight.numel() + projector.linear_2.bias.numel()
    assert round(mbtf / 1e6, 2) == 37.75  # docs/design.md section 2
    assert round(mlp / 1e6, 2) == 134.24


@pytest.mark.gpu
def test_bf16_forward_and_generate_on_cuda(uint8_images):
    model, _ = build_tiny()
    model = model.to("cuda", torch.bfloat16)
    ids = prompt_ids(36).cuda()
    pixels = uint8_images[:1].cuda()
    out = model(input_ids=ids, pixel_values=pixels, labels=ids)
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)
    generated = model.generate(
        input_ids=ids, pixel_values=pixels, max_new_tokens=4, min_new_tokens=4
    )
    assert generated.shape[1] == ids.shape[1] + 4
