"""A model folder: the Hugging Face directory (``config.json``, tokenizer files, safetensors) that
``stf init``, ``stf convert`` and training write and every job reads, local or on ``s3://``.

This module says which of its files a job copies (all of them to load the model, the small ones to
read its config and tokenizer), how a reference becomes a local folder (an S3 folder is copied
once into the local cache), and which folders a job may write a model into.
"""

from __future__ import annotations

import os

from pipelines.errors import InputError, MissingInput
from pipelines.spec import StorageOptions
from pipelines.storage import (
    expand_inputs,
    filesystem,
    fs_path,
    is_s3,
    join,
    local_copy,
    read_json,
)

# Config and tokenizer (a SentencePiece model, a vocabulary, merges, a tiktoken file, a chat
# template): a folder may also hold many GB of weights, which reading these does not need.
SMALL_FILES = ("*.json", "*.jinja", "*.model", "*.txt", "*.tiktoken")
# What loading a model needs: the small files and the weights, as safetensors only (no pickles).
MODEL_FILES = (*SMALL_FILES, "*.safetensors")
# The ``model_type`` of a LLaVA-STF model folder's config.json.
MODEL_TYPE = "llava_stf"


def local_model_folder(
    ref: str, storage: StorageOptions, patterns: tuple[str, ...] = MODEL_FILES
) -> str:
    """The local folder of a model folder reference, with the files ``patterns`` names (an S3
    folder copied into the cache)."""
    local = local_copy(ref, storage, patterns)
    if not os.path.isfile(os.path.join(local, "config.json")):
        raise MissingInput(f"{ref} is not a model directory (no config.json)")
    return local


def local_base_folder(url: str, storage: StorageOptions, what: str) -> str:
    """The local folder of a base model (an LLM or a vision tower as its authors publish it):
    config, tokenizer and weights, safetensors when the folder has them, else ``.bin``."""
    try:
        expand_inputs([join(url, "*.safetensors")], storage)
        weights: tuple[str, ...] = ("*.safetensors",)
    except MissingInput:
        weights = ("*.bin",)
    try:
        return local_copy(url, storage, (*SMALL_FILES, *weights))
    except MissingInput as err:
        raise MissingInput(f"{what} {url}: {err}") from err


def check_output(output: str, inputs: list[str], storage: StorageOptions) -> None:
    """Refuses an ``output`` folder that writing a model would destroy: an input's folder, one
    inside or around it (writing replaces the whole folder), or an existing folder holding
    anything but a LLaVA-STF model folder."""
    for source in inputs:
        out, src = output.rstrip("/"), source.rstrip("/")
        if not is_s3(out) and not is_s3(src):
            out, src = os.path.realpath(out), os.path.realpath(src)
        if out == src or src.startswith(out + "/") or out.startswith(src + "/"):
            raise InputError(
                f"output {output!r} is, holds or lies in the input {source!r}: writing it would "
                "replace the input; name a new folder"
            )
    fs, path = filesystem(output, storage), fs_path(output).rstrip("/")
    if not fs.exists(path) or (fs.isdir(path) and not fs.ls(path)):
        return
    config = read_json(join(output, "config.json"), storage) if fs.isdir(path) else None
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise InputError(
            f"output {output!r} exists and is not a LLaVA-STF model directory: writing would "
            "replace what it holds; name a new or empty folder"
        )
