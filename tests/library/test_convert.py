"""Conversion of a published LLaVA-STF checkpoint: a tiny one in the published layout, built
here, converted and checked against a direct re-implementation of the published computation."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from support.checkpoints import published_checkpoint, published_image_features
from transformers import CLIPVisionModel, LlamaForCausalLM

from stf_model import STFForConditionalGeneration, load_model_dir, normalize_pixels
from stf_model.constants import PUBLISHED_MBTF_LAYERS
from stf_model.convert import convert_published_checkpoint as convert
from stf_model.errors import ModelInputError


@pytest.fixture
def pixels():
    gen = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8, generator=gen)


def test_convert_safetensors_with_vision_matches_published_computation(tmp_path, pixels):
    src, dst = tmp_path / "published", tmp_path / "ours"
    tensors, vision_tensors, vision_cfg = published_checkpoint(src, True, "safetensors", True)
    convert(src, dst)

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
    with pytest.raises(ModelInputError, match="no vision tower weights"):
        convert(src, dst)
    convert(src, dst, vision_tower=tower)

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


def test_convert_reports_a_mismatched_checkpoint(tmp_path):
    src = tmp_path / "published"
    published_checkpoint(src, True, "safetensors", True)
    # A window the weights cannot have: 4x4 windows need 16C projector inputs.
    with pytest.raises(ModelInputError, match="does not match"):
        convert(src, tmp_path / "o", window=4)
    with pytest.raises(ModelInputError, match="no config.json"):
        convert(tmp_path / "nowhere", tmp_path / "o")


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
    with pytest.raises(ModelInputError, match="fuses 4 blocks"):  # it cannot guess which 4
        convert(src, tmp_path / "a")
    convert(src, tmp_path / "b", blocks=[-2, 21, 18, 15])
    assert STFForConditionalGeneration.from_pretrained(tmp_path / "b").config.feature_layers == [
        -2,
        21,
        18,
        15,
    ]


def test_convert_a_qwen2_based_checkpoint_with_a_tied_head(tmp_path, pixels):
    """LLaVA-OneVision's code base names the LLM in model_type (llava_qwen) and leaves a tied LM
    head out of the weights: the LLM half must come out as that Qwen2, logit for logit."""
    from transformers import Qwen2ForCausalLM

    src, dst = tmp_path / "published", tmp_path / "ours"
    tensors, vision_tensors, vision_cfg = published_checkpoint(
        src, True, "safetensors", True, "qwen2"
    )
    convert(src, dst)
    model, _ = load_model_dir(dst)
    assert model.config.text_config.model_type == "qwen2" and model.config.tie_word_embeddings
    assert model.lm_head.weight is model.get_input_embeddings().weight
    qwen = Qwen2ForCausalLM(model.config.text_config).eval()
    qwen.load_state_dict(
        {
            k: v
            for k, v in tensors.items()
            if not k.startswith("model.mm_") and "vision" not in k and "inv_freq" not in k
        },
        strict=False,
    )
    qwen.tie_weights()
    ids = torch.tensor([[1, 20, 30, 40, 50]])
    torch.testing.assert_close(model(input_ids=ids).logits, qwen(input_ids=ids).logits)
    norm = normalize_pixels(pixels, model.config.image_mean, model.config.image_std)
    expected = published_image_features(tensors, vision_tensors, vision_cfg, norm)
    torch.testing.assert_close(model.get_image_features(pixels), expected, rtol=1e-4, atol=1e-5)


def test_convert_takes_real_checkpoints_quirks(tmp_path):
    """What published checkpoints and their folders hold beyond the tiny one: RoPE settings under
    their legacy names (Llama 3's rope_theta 500000, Qwen2's 1e6), the Trainer's
    training_args.bin beside .bin shards, and a CLIP dump that stores position_ids."""
    import json

    src, tower = tmp_path / "published", tmp_path / "clip"
    _, vision_tensors, vision_cfg = published_checkpoint(src, False, "bin", False)
    config = json.loads((src / "config.json").read_text())
    config.pop("rope_parameters", None)
    config["rope_theta"] = 500000.0
    (src / "config.json").write_text(json.dumps(config))
    torch.save({"learning_rate": 2e-5, "run": object}, src / "training_args.bin")  # a pickle
    CLIPVisionModel(vision_cfg).save_pretrained(tower)
    clip_weights = dict(vision_tensors)
    clip_weights["vision_model.embeddings.position_ids"] = torch.arange(10).unsqueeze(0)
    for shard in tower.glob("*.safetensors"):
        shard.unlink()
    save_file({k: v.contiguous() for k, v in clip_weights.items()}, tower / "model.safetensors")
    convert(src, tmp_path / "ours", vision_tower=tower)
    model = STFForConditionalGeneration.from_pretrained(tmp_path / "ours")
    assert model.config.text_config.rope_parameters["rope_theta"] == 500000.0


def test_convert_names_a_layout_that_is_not_the_published_one(tmp_path):
    src = tmp_path / "llava-hf"
    published_checkpoint(src, True, "safetensors", True)
    for shard in src.glob("*.safetensors"):
        renamed = {
            k.replace("model.mm_projector.", "multi_modal_projector.linear_"): v
            for k, v in load_file(shard).items()
        }
        save_file(renamed, shard)
    with pytest.raises(ModelInputError, match="llava-hf"):
        convert(src, tmp_path / "o")
