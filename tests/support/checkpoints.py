"""A tiny checkpoint in the published LLaVA-STF layout (what the reference code saves), and the
published computation written out, for the conversion tests of the library and the CLI."""

import json

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import CLIPVisionModel, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from stf_model import build_tiny_tokenizer
from stf_model.constants import PUBLISHED_MBTF_LAYERS
from stf_model.presets import preset_config

# The LLM shape both test LLMs share (Qwen2's from the tiny preset's LLaMA numbers).
QWEN2_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def published_checkpoint(path, with_vision: bool, fmt: str, with_image_token: bool, llm="llama"):
    """Writes config.json, weights and tokenizer as the reference code's LlavaLlamaForCausalLM
    would (8 published blocks on a 24-block CLIP, 2x2 window); returns the raw tensors. With
    ``llm="qwen2"``, as LLaVA-OneVision's LlavaQwenForCausalLM would, tied LM head left out."""
    cfg = preset_config(
        "tiny", vision_feature_layer=list(PUBLISHED_MBTF_LAYERS), **{"vision.num_hidden_layers": 24}
    )
    vision_cfg, text_cfg = cfg.vision_config, cfg.text_config
    if llm == "qwen2":
        fields = {k: getattr(text_cfg, k) for k in QWEN2_FIELDS}
        text_cfg = Qwen2Config(**fields, tie_word_embeddings=True)
    C, D = vision_cfg.hidden_size, text_cfg.hidden_size
    torch.manual_seed(0)
    model_class = Qwen2ForCausalLM if llm == "qwen2" else LlamaForCausalLM
    llm_state = model_class(text_cfg).state_dict()  # model.embed_tokens, model.layers.*, lm_head
    if llm == "qwen2":
        llm_state.pop("lm_head.weight")  # tied: the published files do not repeat it
    llm = llm_state
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
    qwen = isinstance(text_cfg, Qwen2Config)
    config.update(
        architectures=["LlavaQwenForCausalLM" if qwen else "LlavaLlamaForCausalLM"],
        model_type="llava_qwen" if qwen else "llava_llama",
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
