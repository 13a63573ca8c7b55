"""`stf infer` on a real local Ray: error rows, parity, resume after a kill, S3."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from support.benchmark_files import read_jsonl
from support.jobkill import kill_cli_job_when

from pipelines.infer import InferSpec
from pipelines.infer.job import run as run_infer
from pipelines.infer.output import read_output


def _images(folder: Path, n: int) -> list[Path]:
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / ("sub" if i % 3 == 0 else "") / f"img{i:03d}.jpg"
        Image.new("RGB", (40 + i, 30), (10 * i % 255, 80, 160)).save(path)
        paths.append(path)
    return paths


def _spec(model_dir, inputs, output, **extra) -> InferSpec:
    return InferSpec.model_validate(
        {
            "model": {"path": model_dir},
            "inputs": inputs,
            "output": str(output),
            "max_new_tokens": 5,
            "batch_size": 4,
            "rows_per_file": 8,
            **extra,
        }
    )


def test_folder_with_broken_images_gives_error_rows(ray_local, model_dir, tmp_path, capfd):
    from pipelines.models import load_generator
    from pipelines.spec import InferenceModel, StorageOptions
    from stf_model.generation import ChatPrompt, SamplingParams

    images = tmp_path / "images"
    good = _images(images, 9)
    (images / "broken.png").write_bytes(b"this is not a png")
    big = tmp_path / "big.jpg"
    Image.effect_noise((200, 150), 60).convert("RGB").save(big)
    (images / "cut.jpg").write_bytes(big.read_bytes()[: big.stat().st_size * 2 // 3])
    (images / "notes.txt").write_text("not an image, not listed")
    spec = _spec(model_dir, str(images), tmp_path / "out", prompt="Describe.", answers_jsonl=True)
    summary = run_infer(spec)
    assert summary.rows == 11 and summary.answered == 9 and summary.errors == 2
    assert summary.errors_by_reason == {"image_undecodable": 1, "image_truncated": 1}
    # The driver's progress bar ends at every row, with their rate (tqdm writes s/row when that
    # is under one row a second, as on a loaded machine) and the error rows.
    bars = re.findall(r"infer: [^\r\n]*", capfd.readouterr().err)
    rate = r"(row/s|s/row)"
    assert bars and re.search(rf"100%.* 11/11 \[.*{rate}, errors=2\]", bars[-1]), bars[-3:]
    output = {r["id"]: r for r in read_output(spec).to_pylist()}
    assert set(output) == {str(p.relative_to(images)) for p in good} | {"broken.png", "cut.jpg"}
    broken = output["broken.png"]
    assert broken["answer"] is None and broken["error"] == "image_undecodable"
    assert broken["error_detail"] and ":" not in broken["error"]
    assert output["cut.jpg"]["error"] == "image_truncated"
    row = output["sub/img000.jpg"]
    assert row["error"] is None and row["completion_tokens"] == 5 and row["prompt_tokens"] > 36
    # The job's answer is what the model gives in this process.
    generator = load_generator(InferenceModel(path=model_dir), StorageOptions())
    text = generator.render(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}]
    )
    expected = generator.generate(
        [ChatPrompt(text, [Image.open(good[0]).convert("RGB")], SamplingParams(5, temperature=0))]
    )[0]
    assert row["answer"] == expected.text
    answers = read_jsonl(tmp_path / "out" / "answers.jsonl")
    assert len(answers) == 11 and {"question_id", "prompt", "text", "model_id"} <= set(answers[0])
    refused = next(a for a in answers if a["question_id"] == "broken.png")
    assert (
        refused["error"] == "image_undecodable"
        and refused["error_detail"] == broken["error_detail"]
    )
    # A re-run has nothing left to do and writes nothing new.
    files = sorted(os.listdir(tmp_path / "out" / "parts"))
    sizes = [pq.read_metadata(tmp_path / "out" / "parts" / f).num_rows for f in files]
    assert sum(sizes) == 11 and max(sizes) <= 8  # rows_per_file
    again = run_infer(spec)
    assert again.resumed_rows == 11 and sorted(os.listdir(tmp_path / "out" / "parts")) == files


def test_table_input_with_per_row_prompts_and_template(ray_local, model_dir, tmp_path):
    images = _images(tmp_path / "imgs", 4)
    table = tmp_path / "rows.jsonl"
    rows = [
        {"key": f"q{i}", "path": str(p.relative_to(tmp_path / "imgs")), "question": f"Q{i}?"}
        for i, p in enumerate(images)
    ]
    rows[0]["ask"] = "own prompt"
    rows[2]["question"] = "<image> twice <image></s>?"  # user text: answered as text
    table.write_text("\n".join(json.dumps(r) for r in rows))
    spec = _spec(
        model_dir,
        str(table),
        tmp_path / "out",
        id_column="key",
        image_column="path",
        image_root=str(tmp_path / "imgs"),
        prompt_column="ask",
        prompt="default",
        prompt_template="{prompt} / {question}",
        rows_per_file=1,  # under the batch size: Ray Data answers the rows in one task
    )
    run_infer(spec)
    parts = list((tmp_path / "out" / "parts").iterdir())
    assert sorted(pq.read_metadata(f).num_rows for f in parts) == [1, 1, 1, 1]
    output = read_output(spec).to_pylist()
    prompts = {r["id"]: r["prompt"] for r in output}
    assert prompts == {
        "q0": "own prompt / Q0?",
        "q1": "default / Q1?",
        "q2": "default / <image> twice <image></s>?",
        "q3": "default / Q3?",
    }
    assert all(r["error"] is None and r["answer"] is not None for r in output)
    tokens = {r["id"]: r["prompt_tokens"] for r in output}
    assert tokens["q2"] > tokens["q1"]  # the typed placeholders are text tokens, not 36 each
    assert tokens["q2"] < tokens["q1"] + 36
    bad = _spec(model_dir, str(table), tmp_path / "o2", id_column="nope")
    with pytest.raises(ValueError, match="no 'nope'"):
        run_infer(bad)


def test_repair_drops_partial_files_and_redoes_their_rows(ray_local, model_dir, tmp_path):
    images = tmp_path / "images"
    _images(images, 20)
    spec = _spec(model_dir, str(images), tmp_path / "out")
    run_infer(spec)
    parts = tmp_path / "out" / "parts"
    files = sorted(parts.iterdir())
    assert len(files) >= 2
    lost = pq.read_table(files[0]).column("id").to_pylist()
    files[0].write_bytes(files[0].read_bytes()[:100])  # as if killed while writing
    twin = parts / "twin.parquet"
    twin.write_bytes(files[1].read_bytes())  # as if a retried task wrote its block twice
    summary = run_infer(spec)
    assert summary.resumed_rows == 20 - len(lost)
    ids = read_output(spec).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 20 and set(lost) <= set(ids)
    assert not files[0].exists() or pq.read_table(files[0])  # the partial file is gone
    assert not (twin.exists() and files[1].exists())


@pytest.mark.slow  # a fault test: a real SIGKILL mid-run, then the re-run (`make test-slow`)
def test_killed_run_resumes_and_writes_each_id_once(ray_local, model_dir, tmp_path):
    images = tmp_path / "images"
    _images(images, 48)
    out = tmp_path / "out"
    args = [
        "infer",
        "--set",
        f"model.path={model_dir}",
        "--set",
        f"inputs={images}",
        "--set",
        f"output={out}",
        "--set",
        "max_new_tokens=24",
        "--set",
        "batch_size=2",
        "--set",
        "rows_per_file=2",
    ]
    parts = out / "parts"
    kill_cli_job_when(args, ray_local, lambda: _a_complete_part_in(parts))
    assert not (out / "summary.json").exists()
    spec = _spec(model_dir, str(images), out, max_new_tokens=24, batch_size=2, rows_per_file=2)
    summary = run_infer(spec)
    assert 0 < summary.resumed_rows < 48
    ids = read_output(spec).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 48


def _a_complete_part_in(parts: Path) -> bool:
    """Whether an output file in ``parts`` is whole (its Parquet footer written). A file shows up
    as soon as the driver opens it; killed before it is whole, the run would leave nothing to
    resume."""
    for path in parts.glob("*.parquet") if parts.exists() else []:
        try:
            pq.read_metadata(path)
            return True
        except (OSError, pa.ArrowInvalid):
            continue
    return False


def test_infer_from_and_to_s3(ray_local, s3_server, model_dir, tmp_path):
    from pipelines.spec import StorageOptions
    from pipelines.storage import filesystem

    storage = {
        "endpoint_url": s3_server,
        "access_key_id": "testing",
        "secret_access_key": "testing",
    }
    fs = filesystem("s3://x", StorageOptions(**storage))
    fs.mkdir("infer-bucket")
    images = _images(tmp_path / "images", 5)
    for path in images:
        fs.put_file(str(path), f"infer-bucket/images/{path.relative_to(tmp_path / 'images')}")
    fs.put(model_dir + "/", "infer-bucket/model/", recursive=True)
    spec = _spec(
        "s3://infer-bucket/model",
        "s3://infer-bucket/images/**/*.jpg",
        "s3://infer-bucket/out",
        storage=storage,
    )
    summary = run_infer(spec)
    assert summary.rows == 5 and summary.errors == 0
    assert sorted(read_output(spec).column("id").to_pylist()) == sorted(
        str(p.relative_to(tmp_path / "images")) for p in images
    )
    fs.invalidate_cache()
    assert fs.exists("infer-bucket/out/summary.json")
