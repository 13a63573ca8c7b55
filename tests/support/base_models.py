"""Tiny base models saved in the public layouts, with the real transformers classes, for the tests
of `stf init` and the real-model path (nothing downloads here).

- a LLaMA / Vicuna-style LLM: `LlamaForCausalLM` in sharded safetensors and a SentencePiece-style
  `LlamaTokenizer` (BPE with byte fallback and the `▁` metaspace, `<s>` added, no pad token),
- a Qwen2-style LLM: `Qwen2ForCausalLM` (tied embeddings) with a byte-level BPE tokenizer and
  Qwen2's ChatML chat template,
- a full `CLIPModel` directory (vision and text halves, as the public CLIP releases are) with its
  `CLIPImageProcessor`,
- a SigLIP vision directory (`SiglipVisionModel`, no CLS token) with its `SiglipImageProcessor`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    SiglipImageProcessor,
    SiglipVisionConfig,
    SiglipVisionModel,
)

# What the tiny LLMs will read: chat text and the synthetic corpus' words.
TEXT = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives
helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT: system user
What is in the image? Describe the image briefly. Answer the question using a single word or phrase.
How many shapes are there? What color is the shape at the top left? What shape is at the top right?
Where is the red circle? one two three four shapes: a red circle at the bottom left and a blue square.
red green blue yellow purple orange circle square triangle top bottom left right
You are a helpful assistant. Hello! How are you today? I am fine, thank you.
""".strip().splitlines()

# Qwen2's chat template as published (ChatML, default system prompt), tools left out.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GRID_IMAGE_SIZE, PATCH = 48, 4  # a 12x12 patch grid: windows 1, 2, 3 and 4 all divide it


def _trained_bpe(pre_tokenizer, vocab_size: int, specials: list[str], alphabet: list[str]):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(TEXT * 4, trainer=trainer)
    model = json.loads(tok.model.__getstate__())
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def llama_tokenizer() -> LlamaTokenizer:
    """SentencePiece-style: `<unk>` `<s>` `</s>`, then the 256 byte-fallback pieces, then BPE merges
    over `▁`-joined words, as LLaMA-2 / Vicuna tokenizers are laid out. No pad token."""
    learned, merges = _trained_bpe(
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True), 400, [], []
    )
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in sorted(learned, key=learned.get):
        vocab.setdefault(piece, len(vocab))
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)


def qwen2_tokenizer() -> Qwen2Tokenizer:
    """Byte-level BPE with Qwen2's specials and its ChatML template (pad `<|endoftext|>`)."""
    learned, merges = _trained_bpe(
        pre_tokenizers.ByteLevel(add_prefix_space=False),
        400,
        [],
        pre_tokenizers.ByteLevel.alphabet(),
    )
    vocab = dict(sorted(learned.items(), key=lambda kv: kv[1]))
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>")
    tokenizer.add_special_tokens(
        {"additional_special_tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}
    )
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = QWEN2_CHAT_TEMPLATE
    return tokenizer


def save_llama_with_only_a_sentencepiece_model(path: Path) -> bytes:
    """A Vicuna-style LLM directory whose tokenizer is ``tokenizer.model`` alone (no
    tokenizer.json), as ``lmsys/vicuna-7b-v1.5`` ships it; returns the model's bytes. The
    SentencePiece model is trained here, LLaMA's way (BPE, byte fallback, digits split, no
    normalisation)."""
    import io

    import sentencepiece

    save_llama(path)
    (path / "tokenizer.json").unlink()
    words = "the red circle is at the top left what color shape two blue square 1 2 3"
    lines = [" ".join(words.split()[i:] + words.split()[:i]) for i in range(len(words.split()))]
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 20),
        model_writer=model,
        vocab_size=300,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (path / "tokenizer.model").write_bytes(model.getvalue())
    return model.getvalue()


def save_llama(path: Path, seed: int = 0) -> Path:
    """A Vicuna-shaped LLM directory: config, sharded safetensors, tokenizer files."""
    tokenizer = llama_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path, max_shard_size="100KB")
    tokenizer.save_pretrained(path)
    return path


def save_qwen2(path: Path, seed: int = 0) -> Path:
    """A Qwen2-shaped LLM directory (tied embeddings, ChatML template)."""
    tokenizer = qwen2_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_clip(path: Path, seed: int = 0) -> Path:
    """A full `CLIPModel` directory with its image processor (crop to the tower's size)."""
    config = CLIPConfig(
        text_config={
            "vocab_size": 100,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 4,
            "num_attention_heads": 2,
            "image_size": GRID_IMAGE_SIZE,
            "patch_size": PATCH,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": GRID_IMAGE_SIZE},
        crop_size={"height": GRID_IMAGE_SIZE, "width": GRID_IMAGE_SIZE},
    ).save_pretrained(path)
    return path


def save_siglip(path: Path, seed: int = 0) -> Path:
    """A SigLIP vision directory (no CLS token: every patch token is an image token)."""
    config = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        image_size=GRID_IMAGE_SIZE,
        patch_size=PATCH,
    )
    torch.manual_seed(seed)
    SiglipVisionModel(config).save_pretrained(path)
    SiglipImageProcessor(
        size={"height": GRID_IMAGE_SIZE, "width": GRID_IMAGE_SIZE}
    ).save_pretrained(path)
    return path
