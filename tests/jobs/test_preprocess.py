"""`stf preprocess` end to end on a real local Ray: shards match a direct single-record
computation, bad inputs land in the quarantine with their reason, nothing is lost, and a killed or
failed run never looks complete."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.bad_inputs import write_bad_corpus
from support.base_models import llama_tokenizer
from support.jobkill import kill_cli_job_when

from pipelines.cli import main
from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import PreprocessFailed, run
from pipelines.preprocess.processor import load_model_inputs
from pipelines.preprocess.source import RAW_SCHEMA, iter_raw_records
from pipelines.shards import read_manifest, shard_urls
from pipelines.spec import StorageOptions
from pipelines.synth.corpus import write_corpus
from stf_model import build_image_processor, build_tiny_tokenizer, get_chat_template, preset_config
from stf_model.processing import decode_image, image_to_uint8
from stf_model.records import parse_record, tokenize_conversation

pytestmark = pytest.mark.usefixtures("ray_local")
CONFIG = preset_config("tiny")
TOKENIZER = build_tiny_tokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_corpus(root, n=40, seed=0, n_eval=10)
    return root


def read_rows(output, folder="shards"):
    manifest = read_manifest(str(output))
    tables = [pq.read_table(url) for url in shard_urls(str(output), manifest, folder)]
    rows = [row for t in tables for row in t.to_pylist()]
    return manifest, rows


def expected_row(record, root, template, aspect="pad", max_length=2048):
    conv = parse_record(record, single_exchange=template == "plain")
    pixels = None
    if conv.image:
        image = decode_image((Path(root) / conv.image).read_bytes(), 89_478_485)
        pixels = image_to_uint8(image, build_image_processor(CONFIG, aspect))
    sample = tokenize_conversation(
        conv.messages,
        TOKENIZER,
        get_chat_template(template),
        max_length=max_length,
        image_token_id=4,
        num_images=conv.num_images,
        image_tokens=CONFIG.num_image_tokens,
    )
    return sample, pixels


@pytest.mark.parametrize(
    "name,template,aspect",
    [("finetune.jsonl", "vicuna_v1", "pad"), ("pretrain.json", "plain", "crop")],
)
def test_shards_match_a_direct_single_record_computation(
    corpus, tmp_path, name, template, aspect, monkeypatch
):
    from fsspec.implementations.local import LocalFileSystem

    records_file = str(corpus / name)
    real_open = LocalFileSystem._open

    def driver_open(self, path, *args, **kwargs):
        # The records are read by Ray Data's read tasks, in worker processes: the driver lists
        # the file and never holds its records (LCS-558K's JSON is one array of 558,128).
        assert not str(path).endswith(records_file), "the driver opened the records file"
        return real_open(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", driver_open)
    out = tmp_path / "out"
    spec = PreprocessSpec(
        inputs=[str(corpus / name)],
        output=str(out),
        template=template,
        image_aspect=aspect,
        rows_per_shard=16,
    )
    manifest = run(spec)
    text = (corpus / name).read_text()
    records = (
        json.loads(text)
        if name.endswith(".json")
        else [json.loads(x) for x in text.split("\n") if x]
    )
    counts = manifest.counts
    assert counts.read == counts.written == len(records) and counts.quarantined == 0
    assert len(manifest.shards) >= 2 and manifest.image.size == 48
    _, rows = read_rows(out)
    by_id = {row["id"]: row for row in rows}
    assert len(by_id) == len(rows) == len(records)  # every record exactly once
    assert counts.longest == max(row["length"] for row in rows)
    for record in records:
        row = by_id[record["id"]]
        sample, pixels = expected_row(record, corpus, template, aspect)
        assert row["input_ids"] == sample.input_ids and row["labels"] == sample.labels
        assert row["length"] == len(sample.input_ids) and row["num_supervised"] > 0
        assert row["input_ids"].count(4) == row["num_images"]
        if pixels is None:
            assert row["pixels"] is None and row["modality"] == "text"
        else:
            got = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(3, 48, 48)
            np.testing.assert_array_equal(got, pixels)
            assert row["modality"] == "image"
    assert (out / "spec.yaml").exists() and sorted(os.listdir(out / "shards")) == sorted(
        Path(p.path).name for p in manifest.shards
    )


def llama_layout_model(path: Path) -> str:
    """Config and tokenizer (a real ``LlamaTokenizer`` with ``<image>`` added) of a model dir."""
    tokenizer = llama_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.pad_token = tokenizer.unk_token
    index = tokenizer.convert_tokens_to_ids("<image>")
    preset_config(
        "tiny", image_token_index=index, **{"text.vocab_size": len(tokenizer)}
    ).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("model", ["tiny", "llama layout"])
def test_a_preprocessing_actor_imports_neither_torch_nor_transformers_model_code(
    corpus, tmp_path, model
):
    """Every actor is a fresh process that unpickles its constructor's arguments and runs batches;
    the same happens here, and afterwards neither torch nor transformers' modeling is loaded
    (importing them costs each actor about 2 s of start-up)."""
    ref = "tiny" if model == "tiny" else llama_layout_model(tmp_path / "model")
    spec = PreprocessSpec(inputs=[str(corpus / "finetune.jsonl")], output="/unused", model=ref)
    url = spec.inputs[0]
    batch = pa.Table.from_pylist(list(iter_raw_records(url, StorageOptions())), schema=RAW_SCHEMA)
    (tmp_path / "args.pkl").write_bytes(pickle.dumps((spec, load_model_inputs(spec), batch)))
    code = (
        "import pickle, sys\n"
        "from pipelines.preprocess.processor import RecordProcessor\n"
        f"spec, model, batch = pickle.loads(open({str(tmp_path / 'args.pkl')!r}, 'rb').read())\n"
        "out = RecordProcessor(spec, model)(batch).to_pylist()\n"
        "print(sorted({r['status'] for r in out}), sum(r['pixels'] is not None for r in out))\n"
        "print(sorted(m for m in ('torch', 'transformers.modeling_utils') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    statuses, loaded = done.stdout.strip().splitlines()
    images = sum(
        1
        for r in corpus.joinpath("finetune.jsonl").read_text().splitlines()
        if "image" in json.loads(r)
    )
    assert statuses == f"['ok'] {images}"
    assert loaded == "[]", f"a preprocessing actor imported {loaded}"


def test_bad_inputs_are_quarantined_with_their_reason(tmp_path):
    expected = write_bad_corpus(tmp_path / "bad")
    out = tmp_path / "out"
    spec = PreprocessSpec(
        inputs=[str(tmp_path / "bad" / "bad.jsonl")],
        image_root=str(tmp_path / "bad" / "images"),
        output=str(out),
        max_length=200,
        max_error_rate=1.0,
    )
    manifest = run(spec)
    _, ok_rows = read_rows(out)
    _, bad_rows = read_rows(out, "quarantine")
    counts = manifest.counts
    assert counts.read == len(expected) == counts.written + counts.quarantined

    got = {r["id"]: ("ok", r) for r in ok_rows}
    for r in bad_rows:
        key = r["id"] if r["id"] is not None else f"line:{r['line']}"
        got[key] = ("quarantine", r)
    assert set(got) == set(expected)
    for key, (outcome, note) in expected.items():
        where, row = got[key]
        assert where == outcome, (key, row)
        if outcome == "quarantine":
            assert row["reason"] == note and row["detail"], (key, row)
            assert row["source"].endswith("bad.jsonl") and row["line"] >= 1
    assert counts.by_reason == dict(
        __import__("collections").Counter(n for o, n in expected.values() if o == "quarantine")
    )

    def pixels(key):
        return np.frombuffer(got[key][1]["pixels"], dtype=np.uint8).reshape(3, 48, 48)

    assert pixels("rotated")[0, 4, 24] > 200 and pixels("rotated")[2, 44, 24] > 200  # upright
    assert pixels("gray16")[:, 24, 24].tolist() == [117, 117, 117]  # rescaled, not white
    assert pixels("cmyk")[0, 24, 24] > 200 and pixels("p")[2, 24, 24] > 150
    assert got["long-truncatable"][1]["truncated"] and counts.truncated == 1
    assert TOKENIZER.decode(got["ok-end"][1]["input_ids"]).count("<image>\nWhich?") == 1


def test_rerun_skips_and_overwrite_rebuilds_without_duplicates(corpus, tmp_path):
    out = tmp_path / "out"
    spec = PreprocessSpec(inputs=[str(corpus / "finetune.jsonl")], output=str(out))
    first = run(spec)
    again = run(spec)
    assert again.skipped and again.fingerprint == first.fingerprint
    rebuilt = run(spec.model_copy(update={"overwrite": True, "rows_per_shard": 7}))
    assert not rebuilt.skipped
    _, rows = read_rows(out)
    assert len(rows) == len({r["id"] for r in rows}) == first.counts.written
    assert sorted(os.listdir(out / "shards")) == sorted(Path(p.path).name for p in rebuilt.shards)
    # A spec that changes the output (another max_length) is rebuilt, not skipped.
    changed = run(spec.model_copy(update={"max_length": 1024}))
    assert not changed.skipped and changed.fingerprint != first.fingerprint


@pytest.mark.slow  # two preprocessing runs of 700 records: ~20 s
def test_the_shards_keep_the_records_order_run_after_run(tmp_path):
    """Two workers and small batches finish out of order; the shards hold the rows in the
    inputs' order all the same, so the data training sees is a function of the spec."""
    corpus = tmp_path / "corpus"
    write_corpus(corpus, n=300, seed=0, n_eval=10)
    spec = PreprocessSpec(
        inputs=[str(corpus / "finetune.jsonl"), str(corpus / "pretrain.json")],
        output=str(tmp_path / "a"),
        workers=2,
        batch_size=3,
        rows_per_shard=16,
    )
    first = run(spec)
    second = run(spec.model_copy(update={"output": str(tmp_path / "b")}))
    _, rows_a = read_rows(tmp_path / "a")
    _, rows_b = read_rows(tmp_path / "b")
    lines = (corpus / "finetune.jsonl").read_text().splitlines()
    records = [json.loads(line)["id"] for line in lines]
    records += [r["id"] for r in json.loads((corpus / "pretrain.json").read_text())]
    assert [r["id"] for r in rows_a] == [r["id"] for r in rows_b] == records
    assert [s.rows for s in first.shards] == [s.rows for s in second.shards]


def test_a_same_size_edit_of_an_input_changes_the_run_fingerprint(corpus, tmp_path):
    """A re-run is skipped only on the same fingerprint (test above); an edit that keeps the
    file's size ('Cats' -> 'Dogs') must change it."""
    from pipelines.preprocess.job import fingerprint
    from pipelines.preprocess.processor import load_model_inputs
    from pipelines.storage import expand_inputs

    path = tmp_path / "edited.jsonl"
    path.write_bytes((corpus / "finetune.jsonl").read_bytes())
    spec = PreprocessSpec(inputs=[str(path)], output=str(tmp_path / "out"))
    model = load_model_inputs(spec)
    before = expand_inputs([str(path)], spec.storage)
    path.write_bytes(path.read_bytes().replace(b"circle", b"CIRCLE", 1))
    later = path.stat().st_mtime_ns + 2_000_000_000  # a later edit, whatever the clock's grain
    os.utime(path, ns=(later, later))
    after = expand_inputs([str(path)], spec.storage)
    assert after[0].size == before[0].size and after[0].version != before[0].version
    assert fingerprint(spec, after, model) != fingerprint(spec, before, model)


def test_error_rate_over_the_threshold_fails_after_writing_the_quarantine(tmp_path, capsys):
    write_bad_corpus(tmp_path / "bad")
    out = tmp_path / "out"
    args = ["preprocess", "--set", f"inputs={tmp_path / 'bad' / 'bad.jsonl'}"]
    args += ["--set", f"image_root={tmp_path / 'bad' / 'images'}", "--set", f"output={out}"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "max_error_rate" in err and "image_missing" in err
    with pytest.raises(ValueError, match="failed"):
        read_manifest(str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["counts"]["quarantined"] > 0
    quarantined = sum(pq.read_table(out / p["path"]).num_rows for p in manifest["quarantine"])
    assert quarantined == manifest["counts"]["quarantined"]


def test_a_broken_json_list_fails_the_job_even_under_the_threshold(tmp_path):
    good = [
        {
            "id": i,
            "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "yes"}],
        }
        for i in range(50)
    ]
    path = tmp_path / "list.json"
    path.write_text(json.dumps(good)[:-30])  # cut inside the last records
    with pytest.raises(PreprocessFailed, match="broken part-way"):
        run(PreprocessSpec(inputs=[str(path)], output=str(tmp_path / "out")))


def test_inputs_with_no_records_fail_the_job(tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    inputs = [str(tmp_path / "empty.json"), str(tmp_path / "blank.jsonl")]
    with pytest.raises(PreprocessFailed, match="no records"):
        run(PreprocessSpec(inputs=inputs, output=str(tmp_path / "out")))


@pytest.mark.slow  # a fault test: a real SIGKILL mid-run, then the re-run (`make test-slow`)
def test_a_killed_run_leaves_nothing_that_looks_complete(ray_local, tmp_path):
    root = tmp_path / "corpus"
    write_corpus(root, n=600, seed=1, n_eval=0)
    out = tmp_path / "out"
    args = [
        "preprocess",
        "--set",
        f"output={out}",
        "--set",
        f"inputs={root / 'finetune.jsonl'}",
        "--set",
        "rows_per_shard=8",
        "--set",
        "batch_size=4",
    ]
    kill_cli_job_when(
        args, ray_local, lambda: (out / "shards").exists() and bool(os.listdir(out / "shards"))
    )
    assert os.listdir(out / "shards") and not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_manifest(str(out))
    manifest = run(PreprocessSpec(inputs=[str(root / "finetune.jsonl")], output=str(out)))
    _, rows = read_rows(out)
    assert len(rows) == len({r["id"] for r in rows}) == manifest.counts.read
    assert sorted(os.listdir(out / "shards")) == sorted(Path(p.path).name for p in manifest.shards)
