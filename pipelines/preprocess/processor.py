"""The preprocessing map stage: raw record text -> processed rows (``ok`` / ``error``).

One actor holds the tokenizer and the image geometry, both read once by the driver
(:func:`load_model_inputs`) and handed to every actor, so that an actor neither reads the model
directory again nor imports torch or transformers' model code (about 2 s per fresh process on
a 2-core machine; ``tests/jobs/test_preprocess.py`` pins that it does not).

Per batch it parses and validates the records, reads their images in one round (S3 reads run
concurrently), decodes each image once, pads or crops and resizes it to the tower's input size,
renders the chat template, tokenises and checks the label mask. The files' count rows pass
through untouched.
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from transformers import PreTrainedTokenizerBase

from pipelines import strict_json
from pipelines.errors import InputError
from pipelines.images import checked_image
from pipelines.preprocess.sink import PROCESSED_SCHEMA, Outcome
from pipelines.preprocess.spec import PreprocessSpec
from pipelines.reasons import RejectedRecord
from pipelines.storage import join, read_many
from stf_model.chat_templates import get_chat_template
from stf_model.constants import IMAGE_TOKEN
from stf_model.images import PixelGrid
from stf_model.records import Conversation, RecordError, parse_record, tokenize_conversation
from stf_model.tokenizer import tokenizer_fingerprint


@dataclass
class ModelInputs:
    """What preprocessing needs from the model: tokenizer, image geometry, token ids. Plain data
    (it is pickled to every actor): no config object, whose class would import torch."""

    tokenizer: PreTrainedTokenizerBase
    template: str  # the chat template's Jinja source, with generation markers
    image_token_id: int
    image_tokens: int
    tokenizer_fingerprint: str
    pixels: PixelGrid  # how an image becomes the tower's input, with the spec's aspect

    @property
    def image_size(self) -> int:
        return self.pixels.size


def load_model_inputs(spec: PreprocessSpec) -> ModelInputs:
    """Tokenizer and config of the spec's model (the ``tiny`` preset or a model directory).

    Runs in the driver, which imports torch (through the config classes) once per job."""
    from pipelines.models import load_config, load_tokenizer
    from stf_model.processing import pixel_grid

    tokenizer = load_tokenizer(spec.model, spec.storage)
    config = load_config(spec.model, spec.storage)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_token_id != config.image_token_index:
        raise InputError(
            f"model {spec.model!r}: the tokenizer maps {IMAGE_TOKEN} to {image_token_id}, the "
            f"config expects {config.image_token_index}; the tokenizer must have {IMAGE_TOKEN} "
            "as one special token (`stf convert` adds it)"
        )
    return ModelInputs(
        tokenizer=tokenizer,
        template=_template(spec, tokenizer),
        image_token_id=image_token_id,
        image_tokens=spec.image_tokens or config.num_image_tokens,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
        pixels=pixel_grid(config, spec.image_aspect),
    )


def _template(spec: PreprocessSpec, tokenizer: PreTrainedTokenizerBase) -> str:
    """The named template, or with ``llm`` the model directory's own, which must mark what the
    assistant says (label masks come from those marks)."""
    if spec.template != "llm":
        return get_chat_template(spec.template)
    own = tokenizer.chat_template
    if not isinstance(own, str) or not re.search(r"{%-?\s*generation\s*-?%}", own):
        raise InputError(
            f"model {spec.model!r}: its chat template has no generation markers, so label masks "
            "cannot come from it; write the model with `stf init --set template=llm`, or use "
            "template vicuna_v1 or plain"
        )
    return own


def image_url(root: str, relative: str) -> str:
    """The image's URL under ``root``; raises ``image_path_escapes_root`` for absolute paths
    and for ``..`` leaving the root."""
    if relative.startswith(("/", "\\")) or "://" in relative or os.path.isabs(relative):
        raise RejectedRecord("image_path_escapes_root", f"{relative!r} is absolute")
    normal = posixpath.normpath(relative.replace("\\", "/"))
    if normal == ".." or normal.startswith("../"):
        raise RejectedRecord("image_path_escapes_root", f"{relative!r} leaves the image root")
    return join(root, normal)


@dataclass
class Parsed:
    """One raw row after parsing: a conversation and its image URL, or the error."""

    record_id: str | None = None
    conversation: Conversation | None = None
    url: str | None = None
    error: RecordError | None = None
    file_records: int | None = None


class RecordProcessor:
    """The map stage's callable class (one instance per actor)."""

    def __init__(self, spec: PreprocessSpec, model: ModelInputs | None = None):
        """``model`` is what the driver loaded; without it the processor loads its own (which
        imports torch: the job always passes it)."""
        self.spec = spec
        self.model = model if model is not None else load_model_inputs(spec)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        parsed = [self.parse(row) for row in rows]
        images = read_many([p.url for p in parsed if p.url is not None], self.spec.storage)
        out = [self.outcome(row, item, images) for row, item in zip(rows, parsed, strict=True)]
        return pa.Table.from_pylist(out, schema=PROCESSED_SCHEMA)

    def outcome(self, row: dict, item: Parsed, images: dict) -> dict[str, Any]:
        """The processed row of one raw row: its count, its sample, or its error."""
        base = {"source": row["source"], "index": row["index"], "line": row["line"]}
        if item.file_records is not None:
            return {**base, "status": Outcome.FILE_COUNT, "file_records": item.file_records}
        base["id"] = item.record_id
        error = item.error
        if error is None:
            try:
                return {**base, "status": Outcome.SAMPLE, **self.sample(item, images)}
            except RecordError as err:
                error = err
            except Exception as err:  # a bug, not bad input: fail loudly, naming the record
                raise RuntimeError(
                    f"{row['source']} line {row['line']} (id {item.record_id}): {err!r}"
                ) from err
        return {**base, "status": Outcome.REJECTED, "reason": error.reason, "detail": error.detail}

    def parse(self, row: dict) -> Parsed:
        if row["file_records"] is not None:
            return Parsed(file_records=row["file_records"])
        if row["error"] is not None:
            return Parsed(error=RejectedRecord(row["reason"], row["error"]))
        try:
            record = strict_json.loads(row["raw"])
        except strict_json.NotJSON as err:
            return Parsed(error=RejectedRecord("malformed_json", str(err)))
        raw_id = record.get("id") if isinstance(record, dict) else None
        record_id = str(raw_id) if raw_id is not None else None
        try:
            conversation = parse_record(
                record,
                add_missing_image_token=self.spec.add_missing_image_token,
                single_exchange=self.spec.template == "plain",
            )
            url = None
            if conversation.image is not None:
                root = self.spec.image_root or posixpath.dirname(row["source"])
                url = image_url(root, conversation.image)
        except RecordError as err:
            return Parsed(record_id=record_id, error=err)
        record_id = record_id or f"{posixpath.basename(row['source'])}:{row['line']}"
        return Parsed(record_id=record_id, conversation=conversation, url=url)

    def sample(self, item: Parsed, images: dict) -> dict[str, Any]:
        conversation, url, pixels = item.conversation, item.url, None
        if url is not None:
            image = checked_image(url, images[url], self.spec.max_image_pixels)
            pixels = self.model.pixels.to_uint8(image).tobytes()
        sample = tokenize_conversation(
            conversation.messages,
            self.model.tokenizer,
            self.model.template,
            max_length=self.spec.max_length,
            image_token_id=self.model.image_token_id,
            num_images=conversation.num_images,
            image_tokens=self.model.image_tokens,
        )
        return {
            "input_ids": sample.input_ids,
            "labels": sample.labels,
            "pixels": pixels,
            "num_images": conversation.num_images,
            "length": len(sample.input_ids),
            "modality": "image" if conversation.num_images else "text",
            "num_supervised": sample.num_supervised,
            "truncated": sample.truncated,
        }
