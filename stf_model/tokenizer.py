"""A small byte-level BPE tokenizer, trained in-process, for the ``tiny`` preset.

Nothing can be downloaded at run time here, so tests and the demo build their tokenizer from a
fixed text; byte-level BPE still encodes any input. Real models use their own tokenizer directory.
"""

from __future__ import annotations

import hashlib
import json

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from stf_model.chat_templates import get_chat_template
from stf_model.constants import IMAGE_TOKEN

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)

# What the tiny models will read: LLaVA's template text and the synthetic corpus' words.
_TRAINING_TEXT = """
A chat between a curious user and an artificial intelligence assistant. The assistant gives
helpful, detailed, and polite answers to the user's questions. USER: ASSISTANT:
What is in the image? Describe the image briefly. Answer the question using a single word or phrase.
How many shapes are there? What color is the circle? What shape is at the top left?
Is there a red square? Where is the blue triangle? Which shape is the largest?
There is a red circle at the top left. There are two green squares and one blue triangle.
A yellow star in the center. An orange diamond at the bottom right. A purple cross on the left.
The image shows three shapes on a white background: a cyan circle, a magenta square, a gray ring.
zero one two three four five six seven eight nine ten yes no
red green blue yellow orange purple cyan magenta white black gray brown pink
circle square triangle star diamond cross ring rectangle ellipse hexagon
top bottom left right center middle upper lower above below next to between
small large big tiny medium the a an of and in on at with is are there this that it
image picture photo shape shapes color colors count position background foreground
""".strip()


def build_tiny_tokenizer(
    vocab_size: int = 512, chat_template: str = "vicuna_v1", with_image_token: bool = True
) -> PreTrainedTokenizerFast:
    """Trains the deterministic tiny tokenizer; ``<image>`` is a single special token unless
    ``with_image_token`` is False (an LLM tokenizer as published, before LLaVA adds it)."""
    specials = SPECIAL_TOKENS if with_image_token else SPECIAL_TOKENS[:-1]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = _TRAINING_TEXT.splitlines()
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": IMAGE_TOKEN} if with_image_token else None,
        model_max_length=2048,
        padding_side="right",
    )
    fast.chat_template = get_chat_template(chat_template)
    return fast


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A short hash of the vocabulary and merges: shards record it, the trainer compares it with
    the model's tokenizer, so token ids never silently mean different words."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocab = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    return hashlib.sha256(vocab.encode()).hexdigest()[:16]
