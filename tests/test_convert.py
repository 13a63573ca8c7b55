"""`stf convert`: a tiny checkpoint in the published LLaVA-STF layout, built here, converted and
checked against a direct re-implementation of the published computation."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import CLIPVisionModel, LlamaForCausalLM

from pipelines.cli import main as stf_main
from stf_model import (
    STFForConditionalGeneration,
    build_tiny_tokenizer,
    load_model_dir,
    normalize_pixels,
)
from stf_model.constants import PUBLISHED_MBTF_LAYERS
from stf_model.presets import preset_config


def published_checkpoint(path, with_vision: bool, fmt: str, with_image_token: bool):
    """Writes config.json, weights and tokenizer as the reference code's LlavaLlamaForCausalLM
    would (8 published blocks on a 24-block CLIP, 2x2 window); returns the raw tensors."""
    cfg = preset_config(
        "tiny", vision_feature_layer=list(PUBLISHED_MBTF_LAYERS), **{"vision.num_hidden_layers": 24}
    )
    vision_cfg, text_cfg = cfg.vision_config, cfg.text_config
    C, D = vision_cfg.hidden_size, text_cfg.hidden_size
    torch.manual_seed(0)
    llm = LlamaForCausalLM(text_cfg).state_dict()  # model.embed_tokens, model.layers.*, lm_head
    clip = CLIPVisionModel(vision_cfg).state_dict()
    tensors = {k: v.clone() for k, v in llm.items()}
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(
        8
    )  # old checkpoints have it
    tensors["model.mm_projector_crosslayer.0.weight"] = torch.randn(4 * C, 8 * C) * 0.05
    tensors["model.mm_projector_crosslayer.0.bias"] = torch.randn(4 * C) * 0.05
    tensors["model.mm_projector_crosslayer.2.weight"] = torch.randn(C, 4 * C) * 0.05
    tensors["model.mm_projector_crosslayer.2.bias"] = torch.randn(C) * 0.05
    tensors["model.mm_projector.0.weight"] = torch.randn(16 * C, 4 * C) * 0.05
    tensors["model.mm_projector.0.bias"] = torch.randn(16 * C) * 0.05
    tensors["model.mm_projector.2.weight"] = torch.randn(D, 16 * C) * 0.05
    tensors["model.mm_projector.2.bias"] = torch.randn(D) * 0.05
    vision_tensors = {"vision_model." + k: v.clone() for k, v in clip.items()}
    if with_vision:
        tensors.update(
            {"model.vision_tower.vision_tower." + k: v for k, v in vision_tensors.items()}
        )
    config = text_cfg.to_dict()
    # LLaVA names its tower by hub id or by a local CLIP directory; only a directory fits tiny.
    vision_cfg.save_pretrained(path.parent / "clip_config")
    config.update(
        architectures=["LlavaLlamaForCausalLM"],
        model_type="llava_llama",
        torch_dtype="float32",
        mm_vision_tower=str(path.parent / "clip_config")
        if with_vision
        else "openai/clip-vit-large-patch14-336",
        mm_hidden_size=C,
        mm_vision_select_layer=-2,
        mm_projector_type="mlp2x_gelu",
        image_aspect_ratio="pad",
    )
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    keys = sorted(tensors)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2 :]]
    for i, part in enumerate(halves):
        shard = {k: tensors[k].contiguous() for k in part}
        if fmt == "safetensors":
            save_file(shard, path / f"model-0000{i + 1}-of-00002.safetensors")
        else:
            torch.save(shard, path / f"pytorch_model-0000{i + 1}-of-00002.bin")
    build_tiny_tokenizer(with_image_token=with_image_token).save_pretrained(path)
    return tensors, vision_tensors, vision_cfg


def published_image_features(tensors, vision_tensors, vision_cfg, pixels):
    """The reference computation, written out: CLIP hidden states at the 8 published indices (CLS
    dropped) concatenated deepest first, MBTF MLP, 2x2 unfold, projector MLP."""
    clip = CLIPVisionModel(vision_cfg).eval()
    clip.load_state_dict({k.removeprefix("vision_model."): v for k, v in vision_tensors.items()})
    hidden = clip(pixels, output_hidden_states=True).hidden_states
    x = torch.cat([hidden[i][:, 1:] for i in PUBLISHED_MBTF_LAYERS], dim=-1)
    p = "model.mm_projector_crosslayer."
    x = F.linear(
        F.gelu(F.linear(x, tensors[p + "0.weight"], tensors[p + "0.bias"])),
        tensors[p + "2.weight"],
        tensors[p + "2.bias"],
    )
    B, N, C = x.shape
    H = int(N**0.5)
    x = x.view(B, H, H, C).unfold(1, 2, 2).unfold(2, 2, 2).reshape(B, -1, 4 * C)
    p = "model.mm_projector."
    return F.linear(
        F.gelu(F.linear(x, tensors[p + "0.weight"], tensors[p + "0.bias"])),
        tensors[p + "2.weight"],
        tensors[p + "2.bias"],
    )


@pytest.fixture
def pixels():
    gen = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8, generator=gen)


def test_convert_safetensors_with_vision_matches_published_computation(tmp_path, pixels):
    src, dst = tmp_path / "published", tmp_path / "ours"
    tensors, vision_tensors, vision_cfg = published_checkpoint(src, True, "safetensors", True)
    assert stf_main(["convert", str(src), str(dst)]) == 0

    model, processor = load_model_dir(dst)
    assert (
        model.config.feature_layers == list(PUBLISHED_MBTF_LAYERS) and model.config.stf_window == 2
    )
    norm = normalize_pixels(pixels, model.config.image_mean, model.config.image_std)
    expected = published_image_features(tensors, vision_tensors, vision_cfg, norm)
    torch.testing.assert_close(model.get_image_features(pixels), expected, rtol=1e-4, atol=1e-5)

    # The LLM half is the published LLaMA, logit for logit.
    llama = LlamaForCausalLM(model.config.text_config).eval()
    llama.load_state_dict(
        {
            k: v
            for k, v in tensors.items()
            if not k.startswith("model.mm_") and "inv_freq" not in k and "vision" not in k
        }
    )
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    torch.testing.assert_close(model(input_ids=ids).logits, llama(input_ids=ids).logits)
    assert processor.tokenizer.chat_template.startswith("{#- LLaVA conv_vicuna_v1")


def test_convert_bin_shards_with_separate_vision_tower(tmp_path, pixels):
    src, dst, tower = tmp_path / "published", tmp_path / "ours", tmp_path / "clip"
    tensors, vision_tensors, vision_cfg = published_checkpoint(src, False, "bin", False)
    clip = CLIPVisionModel(vision_cfg)
    clip.load_state_dict({k.removeprefix("vision_model."): v for k, v in vision_tensors.items()})
    clip.save_pretrained(tower)

    # Without the tower the user is told what to pass.
    assert stf_main(["convert", str(src), str(dst)]) == 2
    assert stf_main(["convert", str(src), str(dst), "--vision-tower", str(tower)]) == 0

    model = STFForConditionalGeneration.from_pretrained(dst)
    _, processor = load_model_dir(dst)
    # <image> was added to the tokenizer: one more word, embeddings padded to a multiple of 64.
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert image_id == 512 == model.config.image_token_index
    assert model.config.text_config.vocab_size == 576
    torch.testing.assert_close(
        model.get_input_embeddings().weight[:512], tensors["model.embed_tokens.weight"]
    )
    norm = normalize_pixels(pixels, model.config.image_mean, model.config.image_std)
    expected = published_image_features(tensors, vision_tensors, vision_cfg, norm)
    torch.testing.assert_close(model.get_image_features(pixels), expected, rtol=1e-4, atol=1e-5)

    # The converted model runs a full prompt through the processor and generates.
    from PIL import Image

    msgs = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    prompt = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        images=Image.new("RGB", (60, 40), (200, 10, 10)), text=prompt, return_tensors="pt"
    )
    assert int((inputs["input_ids"] == image_id).sum()) == 36
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


def test_convert_reports_a_mismatched_checkpoint(tmp_path, capsys):
    src = tmp_path / "published"
    tensors, _, _ = published_checkpoint(src, True, "safetensors", True)
    # A window the weights cannot have: 4x4 windows need 16C projector inputs.
    assert stf_main(["convert", str(src), str(tmp_path / "o"), "--window", "4"]) == 2
    assert "does not match" in capsys.readouterr().err
    assert stf_main(["convert", str(tmp_path / "nowhere"), str(tmp_path / "o")]) == 2


def test_convert_non_published_block_count_needs_and_takes_blocks(tmp_path):
    src = tmp_path / "published"
    published_checkpoint(src, True, "safetensors", True)
    # Keep the first 4 of the 8 blocks: the MBTF input shrinks to 4C.
    for shard in src.glob("*.safetensors"):
        tensors = load_file(shard)
        key = "model.mm_projector_crosslayer.0.weight"
        if key in tensors:
            tensors[key] = tensors[key][:, : tensors[key].shape[1] // 2].contiguous()
            save_file(tensors, shard)
    assert stf_main(["convert", str(src), str(tmp_path / "a")]) == 2  # cannot guess 4 blocks
    assert stf_main(["convert", str(src), str(tmp_path / "b"), "--blocks=-2,21,18,15"]) == 0
    assert STFForConditionalGeneration.from_pretrained(tmp_path / "b").config.feature_layers == [
        -2,
        21,
        18,
        15,
    ]
