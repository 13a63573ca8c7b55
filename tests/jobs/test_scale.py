"""What keeps the jobs' costs linear in their work (`bench/scale.py` measures it at 100,000 rows),
pinned at sizes CI affords: outputs are read a column at a time and streamed out, listings are
paged rather than one request per file, the driver reads no record, files are read once."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.infer import InferSpec
from pipelines.infer.output import OUTPUT_SCHEMA, read_output
from pipelines.infer.rows import iter_records, list_rows
from pipelines.spec import StorageOptions
from pipelines.storage import write_lines


def _part(path, ids, answer="a"):
    rows = [
        {
            "id": i,
            "image": f"/x/{i}.jpg",
            "prompt": "p",
            "answer": answer,
            "error": None,
            "model_id": "m",
            "prompt_tokens": 3,
            "completion_tokens": 1,
            "seconds": 0.1,
        }
        for i in ids
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=OUTPUT_SCHEMA), path)


def _infer_spec(tmp_path, inputs="/nowhere", **extra) -> InferSpec:
    return InferSpec.model_validate(
        {"model": {"path": "/no-model"}, "inputs": inputs, "output": str(tmp_path), **extra}
    )


def test_read_output_reads_the_columns_asked_and_repairs_by_first_file(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    _part(parts / "a-000000.parquet", ["1", "2", "3"])
    _part(parts / "a-000001.parquet", ["3", "4"])  # overlaps a: kept (4 is its own)
    _part(parts / "a-000002.parquet", ["2", "4"])  # every id in earlier files: a twin
    _part(parts / "a-000003.parquet", [])  # nothing of its own: a twin
    (parts / "a-000004.parquet").write_bytes(b"PAR1 torn")  # no footer: a killed write
    spec = _infer_spec(tmp_path)
    with pytest.raises((pa.ArrowInvalid, OSError)):
        read_output(spec)  # without repair nothing is deleted, and a torn file is an error
    ids = read_output(spec, columns=("id",), repair=True)
    assert ids.column_names == ["id"]
    assert sorted(ids.column("id").to_pylist()) == ["1", "2", "3", "3", "4"]
    assert sorted(p.name for p in parts.iterdir()) == ["a-000000.parquet", "a-000001.parquet"]
    assert read_output(spec, columns=("answer", "error")).column_names == ["answer", "error"]
    assert read_output(spec).schema == OUTPUT_SCHEMA


def test_read_output_of_nothing_yet_has_the_columns_asked(tmp_path):
    assert read_output(_infer_spec(tmp_path), columns=("id", "error")).column_names == [
        "id",
        "error",
    ]


def test_write_lines_streams_and_never_leaves_half_a_file(tmp_path):
    target = tmp_path / "answers.jsonl"
    write_lines(str(target), (f"{i}\n" for i in range(100_000)), StorageOptions())
    assert target.read_text().splitlines()[-1] == "99999"

    def failing():
        yield "first\n"
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError):
        write_lines(str(target), failing(), StorageOptions())
    assert target.read_text().splitlines()[-1] == "99999"  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["answers.jsonl"]  # no temporary left


def test_write_lines_to_s3_appears_whole_or_not_at_all(s3_server):
    from pipelines.storage import filesystem

    storage = StorageOptions(
        endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"
    )
    fs = filesystem("s3://x", storage)
    fs.mkdir("lines-bucket")
    write_lines("s3://lines-bucket/a.jsonl", (f"{i}\n" for i in range(1000)), storage)
    assert fs.cat_file("lines-bucket/a.jsonl").decode().splitlines()[-1] == "999"

    def failing():
        yield "x" * (6 << 20) + "\n"  # past s3fs's first part: a multipart upload begins
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError):
        write_lines("s3://lines-bucket/b.jsonl", failing(), storage)
    fs.invalidate_cache()
    assert not fs.exists("lines-bucket/b.jsonl")


def test_table_rows_read_only_the_columns_they_use(tmp_path):
    table = tmp_path / "rows.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b"],
                "image": ["1.jpg", "2.jpg"],
                "topic": ["cats", "dogs"],
                "blob": [b"\0" * 1000, b"\0" * 1000],  # e.g. embedded image bytes
            }
        ),
        table,
    )
    records = list(iter_records(str(table), StorageOptions(), {"id", "topic"}))
    assert records == [{"id": "a", "topic": "cats"}, {"id": "b", "topic": "dogs"}]
    spec = _infer_spec(tmp_path / "out", str(table), prompt_template="About {topic}: {prompt}")
    rows = list_rows(spec).to_pylist()
    assert [r["prompt"] for r in rows] == [f"About {t}: {spec.prompt}" for t in ("cats", "dogs")]
    assert [r["image"] for r in rows] == [str(tmp_path / "1.jpg"), str(tmp_path / "2.jpg")]


def test_jsonl_rows_are_read_a_line_at_a_time_and_split_at_newlines_only(tmp_path):
    table = tmp_path / "rows.jsonl"
    lines = [
        json.dumps({"id": i, "image": f"{i}.jpg", "q": "a\u2028b"}, ensure_ascii=False)
        for i in range(3)
    ]
    table.write_text("\n".join(lines) + "\n\n")
    records = list(iter_records(str(table), StorageOptions()))
    assert [r["id"] for r in records] == [0, 1, 2] and records[0]["q"] == "a\u2028b"


@pytest.mark.slow  # 10 s of uploads to moto (`make test-slow`)
def test_preprocess_up_to_date_check_lists_instead_of_asking_per_file(s3_server, monkeypatch):
    """1,500 files under an output: two pages of one listing, not 1,500 HEAD requests."""
    from pipelines.preprocess import job
    from pipelines.storage import filesystem

    storage = StorageOptions(
        endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing"
    )
    fs = filesystem("s3://x", storage)
    fs.mkdir("listing-bucket")
    keys = {f"listing-bucket/out/shards/{i:05d}.parquet": b"x" for i in range(1500)}
    fs.pipe(keys)
    calls: list[str] = []
    original = type(fs)._call_s3

    async def counted(self, method, *args, **kwargs):
        calls.append(getattr(method, "__name__", str(method)))
        return await original(self, method, *args, **kwargs)

    monkeypatch.setattr(type(fs), "_call_s3", counted)
    found = job._listed("s3://listing-bucket/out", storage)
    assert found == set(keys)
    assert calls.count("head_object") <= 2 and len(calls) <= 8, calls


def test_shard_files_are_read_a_few_at_a_time(ray_local, tmp_path):
    """Read tasks reserve no CPU, so without a cap Ray Data starts them all at once, each in a
    worker process of its own: one process per shard file (a 100,000-row dataset's 96 files held
    the first training step up by a minute on 2 cores). The cap is Ray Data's task pool size."""
    from pipelines.shards import read_shards

    urls = []
    for i in range(6):
        urls.append(str(tmp_path / f"{i}.parquet"))
        pq.write_table(pa.table({"id": [f"{i}-{j}" for j in range(4)]}), urls[-1])
    dataset = read_shards(urls, StorageOptions(), 2)
    assert dataset._logical_plan.dag.compute.size == 2  # Ray Data's read operator's pool
    assert sorted(r["id"] for r in dataset.take_all()) == sorted(
        f"{i}-{j}" for i in range(6) for j in range(4)
    )
