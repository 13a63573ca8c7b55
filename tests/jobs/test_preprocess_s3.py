"""Preprocess from and to s3:// against a real S3 protocol server (moto_server on 127.0.0.1)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import run
from pipelines.shards import read_manifest, shard_urls
from pipelines.spec import StorageOptions
from pipelines.storage import filesystem, fs_path
from pipelines.synth.corpus import write_corpus
from stf_model import build_tiny, save_model_dir

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture
def bucket(s3_server, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage = StorageOptions(
        endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"
    )
    fs = filesystem("s3://x", storage)
    fs.mkdir("corpus-bucket")
    yield storage
    fs.rm("corpus-bucket", recursive=True)


def rows(output, storage, folder="shards"):
    manifest = read_manifest(output, storage)
    fs = filesystem(output, storage)
    out = []
    for url in shard_urls(output, manifest, folder):
        with fs.open(fs_path(url), "rb") as f:
            out.extend(pq.read_table(f).to_pylist())
    return manifest, out


def test_preprocess_from_and_to_s3_matches_local(bucket, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus, n=20, seed=2, n_eval=0)
    with open(corpus / "finetune.jsonl", "a") as f:  # one record whose image is not there
        record = {
            "id": "lost",
            "image": "images/train/none.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nHi?"},
                {"from": "gpt", "value": "red"},
            ],
        }
        f.write(json.dumps(record) + "\n")
    model_dir = tmp_path / "model"
    save_model_dir(*build_tiny(), model_dir)
    fs = filesystem("s3://corpus-bucket", bucket)
    fs.put(str(corpus) + "/", "corpus-bucket/corpus/", recursive=True)
    fs.put(str(model_dir) + "/", "corpus-bucket/model/", recursive=True)

    common = dict(rows_per_shard=8, max_error_rate=0.2)
    s3_spec = PreprocessSpec(
        inputs=["s3://corpus-bucket/corpus/*.jsonl"],
        output="s3://corpus-bucket/out",
        model="s3://corpus-bucket/model",
        storage=bucket,
        **common,
    )
    manifest = run(s3_spec)
    local = run(
        PreprocessSpec(
            inputs=[str(corpus / "finetune.jsonl")], output=str(tmp_path / "o"), **common
        )
    )
    assert manifest.counts.read == local.counts.read == 23
    assert manifest.counts.by_reason == {"image_missing": 1}
    assert manifest.tokenizer.fingerprint == local.tokenizer.fingerprint
    assert "testing" not in manifest.model_dump_json()  # credentials never written out

    _, s3_rows = rows("s3://corpus-bucket/out", bucket)
    _, local_rows = rows(str(tmp_path / "o"), StorageOptions())
    by_id = {r["id"]: r for r in local_rows}
    assert sorted(r["id"] for r in s3_rows) == sorted(by_id)
    for row in s3_rows:
        assert row["input_ids"] == by_id[row["id"]]["input_ids"]
        assert row["labels"] == by_id[row["id"]]["labels"]
        if row["pixels"] is not None:
            np.testing.assert_array_equal(
                np.frombuffer(row["pixels"], np.uint8),
                np.frombuffer(by_id[row["id"]]["pixels"], np.uint8),
            )
    _, quarantine = rows("s3://corpus-bucket/out", bucket, "quarantine")
    assert [(q["id"], q["reason"]) for q in quarantine] == [("lost", "image_missing")]
    assert run(s3_spec).skipped  # a finished S3 output is recognised, not rebuilt


def test_a_same_size_edit_of_an_s3_input_changes_its_version(bucket):
    from pipelines.storage import expand_inputs

    url = "s3://corpus-bucket/edit.jsonl"
    fs = filesystem(url, bucket)
    fs.pipe_file(fs_path(url), b'{"id": "Cats"}\n')
    before = expand_inputs([url], bucket)
    fs.pipe_file(fs_path(url), b'{"id": "Dogs"}\n')
    fs.invalidate_cache()
    after = expand_inputs([url], bucket)
    assert before[0].size == after[0].size and before[0].version != after[0].version


def test_s3_keys_with_glob_characters_are_read_as_named(bucket):
    from pipelines.storage import read_many

    fs = filesystem("s3://corpus-bucket", bucket)
    for name, data in (
        ("brack[1].jpg", b"bracketed"),
        ("brack1.jpg", b"plain"),
        ("q*.jpg", b"star"),
    ):
        fs.pipe_file(f"corpus-bucket/imgs/{name}", data)
    urls = [f"s3://corpus-bucket/imgs/{n}" for n in ("brack[1].jpg", "q*.jpg", "none[2].jpg")]
    got = read_many(urls, bucket)
    assert got[urls[0]] == b"bracketed" and got[urls[1]] == b"star"  # not brack1.jpg's bytes
    assert isinstance(got[urls[2]], FileNotFoundError)


def test_a_model_folder_on_s3_is_copied_with_the_files_each_use_needs(
    bucket, tmp_path, monkeypatch
):
    """The tokenizer and config (a tiktoken file included) without the weights; the model with
    its safetensors; never a pickle."""
    import os

    from pipelines.model_folder import MODEL_FILES, SMALL_FILES, local_model_folder

    monkeypatch.setenv("STF_CACHE", str(tmp_path / "cache"))
    fs = filesystem("s3://corpus-bucket", bucket)
    names = ["config.json", "tokenizer.json", "qwen.tiktoken", "chat_template.jinja"]
    for name in [*names, "model.safetensors", "pytorch_model.bin", "optimizer.pt"]:
        fs.pipe_file(f"corpus-bucket/model/{name}", b"{}")
    small = os.listdir(local_model_folder("s3://corpus-bucket/model", bucket, SMALL_FILES))
    whole = os.listdir(local_model_folder("s3://corpus-bucket/model", bucket, MODEL_FILES))
    assert sorted(small) == sorted([".complete", *names])
    assert sorted(whole) == sorted([".complete", *names, "model.safetensors"])
