"""Scale: every job at 1x, 10x and 100x its work (1,000 / 10,000 / 100,000 records, rows or
images, 64 px images, the tiny model), each run as `stf JOB spec.yaml` in its own process on its
own local Ray, as a user runs it.

Per run: wall time, rows/s, the peak resident memory of the driver (the `stf` process) and of the
largest Ray worker (sampled every 0.2 s over the whole process tree), the files the job wrote and
their bytes; then, per job, rows/s at 100x over rows/s at 10x and peak memory at 100x over 10x.
The jobs:

- preprocess: LLaVA JSONL and LLaVA JSON (one array) records, 2% of them bad (unreadable JSON,
  a missing image, a conversation without an answer), images on local disk, and JSONL with the
  records and images on S3 (moto's server on 127.0.0.1);
- train: one epoch over the 1x and 10x shards; at 100x, as many steps as the 10x epoch (10,000
  rows) drawn from the 100,000-row shards, with the shuffle buffer on;
- infer: a folder of images and a Parquet table of (id, image, prompt) rows; at the largest size,
  a run killed once half its rows are written and the run that resumes it (the resume's cost
  before generating, `list_rows` + reading the done ids, against the first half's time);
- eval: POPE answers files (the three splits' ground truth) and custom question files, scored.

    python bench/scale.py [--sizes 1000,10000,100000] [--jobs preprocess,train,infer,eval]
                          [--s3-sizes 1000,10000,100000] [--work DIR] [--results FILE]

Results accumulate in --results (JSON, default bench-scale.json in the work folder), so one job
can be re-measured alone; the table and `docs/scale.png` are drawn from everything there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

IMAGE_PX = 64
BAD_EVERY = 50  # one record in 50 is bad: 2%
TRAIN_MICRO, TRAIN_WORKERS = 8, 2


# ---- measuring a run ---------------------------------------------------------------------------


class TreeMemory:
    """Samples the resident memory of a process and all its descendants every ``interval``
    seconds; keeps each process's peak. Ray's workers and actors (``ray::...``) are the workers;
    Ray's own daemons (raylet, GCS, agents) are left out of both figures."""

    def __init__(self, pid: int, interval: float = 0.2):
        self.pid, self.interval = pid, interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    rss = proc.memory_info().rss
                    name = "driver" if proc.pid == self.pid else proc.name()
                except psutil.Error:
                    continue
                if rss > self.peaks.get(proc.pid, ("", 0))[1]:
                    self.peaks[proc.pid] = (name, rss)
            self._stop.wait(self.interval)

    def driver(self) -> int:
        return self.peaks.get(self.pid, ("", 0))[1]

    def largest_worker(self) -> tuple[str, int]:
        workers = [v for v in self.peaks.values() if v[0].startswith("ray::")]
        return max(workers, key=lambda v: v[1], default=("", 0))


def files_under(path: Path) -> tuple[int, int, int]:
    """(files, bytes, the largest file's bytes) under a folder."""
    count = total = largest = 0
    for folder, _, names in os.walk(path):
        for name in names:
            size = os.path.getsize(os.path.join(folder, name))
            count, total, largest = count + 1, total + size, max(largest, size)
    return count, total, largest


def run_job(args: list[str], env: dict, stop_when=None) -> dict:
    """Runs ``stf ARGS`` in a new process group with its memory sampled. ``stop_when()``, polled,
    kills the whole group (driver and its local Ray) when it returns True."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    killed = False
    with TreeMemory(proc.pid) as memory:
        while True:
            try:
                proc.wait(timeout=0.2)  # returns the moment the job ends
                break
            except subprocess.TimeoutExpired:
                pass
            if stop_when is not None and stop_when():
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
                proc.wait()
                break
    wall = time.perf_counter() - start
    reader.join(timeout=10)
    _reap(proc.pid)
    if proc.returncode != 0 and not killed:
        raise RuntimeError(f"stf {' '.join(args)} failed:\n{''.join(output[-60:])}")
    name, worker = memory.largest_worker()
    return {
        "wall_s": wall,
        "driver_rss": memory.driver(),
        "worker_rss": worker,
        "worker": name,
        "last_line": output[-1].strip() if output else "",
    }


def _reap(group: int) -> None:
    """Kills whatever the run's process group left (a killed driver's local Ray)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def job_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env | (extra or {})


def write_spec(path: Path, spec: dict) -> str:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


# ---- the data ----------------------------------------------------------------------------------


def make_images(folder: Path, n: int) -> None:
    """``n`` 64 px JPEGs, a coloured square on a coloured ground each (kept between runs)."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    have = len(os.listdir(folder))
    rng = random.Random(have)
    for i in range(have, n):
        image = Image.new("RGB", (IMAGE_PX, IMAGE_PX), tuple(rng.randrange(256) for _ in range(3)))
        x, y = rng.randrange(IMAGE_PX - 16), rng.randrange(IMAGE_PX - 16)
        colour = tuple(rng.randrange(256) for _ in range(3))
        ImageDraw.Draw(image).rectangle([x, y, x + 15, y + 15], fill=colour)
        image.save(folder / f"{i:06d}.jpg", quality=90)


def linked_folder(images: Path, folder: Path, n: int) -> Path:
    """A folder of the first ``n`` images, hard-linked."""
    if folder.exists() and len(os.listdir(folder)) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        target = folder / f"{i:06d}.jpg"
        if not target.exists():
            os.link(images / f"{i:06d}.jpg", target)
    return folder


def record(i: int) -> dict | str:
    """LLaVA record ``i``; every BAD_EVERY-th is bad in one of three ways."""
    good = {
        "id": f"r{i:07d}",
        "image": f"{i:06d}.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": f"A square, number {i % 997}."},
        ],
    }
    if i % BAD_EVERY != BAD_EVERY - 1:
        return good
    kind = (i // BAD_EVERY) % 3
    if kind == 0:
        return "{not json"
    if kind == 1:
        return {**good, "image": f"missing-{i}.jpg"}
    return {**good, "conversations": good["conversations"][:1]}


def write_records(path: Path, n: int, array: bool) -> Path:
    """LLaVA records as JSONL, or as one JSON array (where unreadable JSON becomes a number:
    the array must stay JSON)."""
    if path.exists():
        return path
    with open(path, "w") as f:
        f.write("[\n" if array else "")
        for i in range(n):
            item = record(i)
            if array:
                text = "17" if isinstance(item, str) else json.dumps(item)
                f.write(text + (",\n" if i < n - 1 else "\n"))
            else:
                f.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
        f.write("]\n" if array else "")
    return path


def tiny_model(path: Path) -> str:
    from stf_model import build_tiny, save_model_dir

    if not (path / "config.json").exists():
        save_model_dir(*build_tiny(seed=0), str(path))
    return str(path)


# ---- the jobs ----------------------------------------------------------------------------------


def preprocess(sizes, s3_sizes, work: Path, images: Path) -> list[dict]:
    results = []
    for n in sizes:
        for fmt in ("jsonl", "json"):
            records = write_records(work / f"records-{n}.{fmt}", n, array=fmt == "json")
            out = work / "out" / f"preprocess-{fmt}-local-{n}"
            results.append(
                _preprocess_run(n, f"{fmt}, local", str(records), str(images), out, work, {}, None)
            )
    if s3_sizes:
        from support.moto_s3 import running_moto

        with running_moto() as endpoint:
            storage = {"endpoint_url": endpoint, "access_key_id": "k", "secret_access_key": "s"}
            fs = _s3(storage)
            fs.mkdir("scale")
            upload_images(fs, images, max(s3_sizes))
            for n in s3_sizes:
                records = write_records(work / f"records-{n}.jsonl", n, array=False)
                fs.put_file(str(records), f"scale/records-{n}.jsonl")
                url = f"s3://scale/out/preprocess-{n}"
                results.append(
                    _preprocess_run(
                        n,
                        "jsonl, S3",
                        f"s3://scale/records-{n}.jsonl",
                        "s3://scale/images",
                        url,
                        work,
                        storage,
                        fs,
                    )
                )
    return results


def _s3(storage: dict):
    import s3fs

    return s3fs.S3FileSystem(
        key=storage["access_key_id"],
        secret=storage["secret_access_key"],
        client_kwargs={"endpoint_url": storage["endpoint_url"]},
    )


def upload_images(fs, images: Path, n: int) -> None:
    started = time.perf_counter()
    batch = 2000
    for start in range(0, n, batch):
        names = [f"{i:06d}.jpg" for i in range(start, min(n, start + batch))]
        fs.put([str(images / m) for m in names], [f"scale/images/{m}" for m in names])
    print(f"uploaded {n} images to moto in {time.perf_counter() - started:.0f} s", flush=True)


def _preprocess_run(n, variant, records, image_root, out, work, storage, fs) -> dict:
    spec = {
        "inputs": [records],
        "output": str(out),
        "image_root": image_root,
        "template": "vicuna_v1",
        "model": "tiny",
        "overwrite": True,
    }
    if storage:
        spec["storage"] = storage
    path = write_spec(work / "specs" / f"preprocess-{variant.replace(', ', '-')}-{n}.yaml", spec)
    result = run_job(["preprocess", path], job_env())
    if fs is None:
        manifest = json.loads((Path(out) / "manifest.json").read_text())
        files, size, largest = files_under(Path(out))
    else:
        manifest = json.loads(fs.cat_file(f"{out[5:]}/manifest.json"))
        sizes = [fs.info(p)["size"] for p in fs.find(out[5:])]
        files, size, largest = len(sizes), sum(sizes), max(sizes)
    counts = manifest["counts"]
    assert counts["read"] == n, (counts, n)
    print(f"preprocess {variant} {n}: {result['wall_s']:.1f} s, {counts}", flush=True)
    return _row("preprocess", variant, n, n, result, files, size, largest)


def train(sizes, work: Path) -> list[dict]:
    results = []
    top = max(sizes)
    second = sorted(sizes)[-2] if len(sizes) > 1 else top
    for n in sizes:
        shards = work / "out" / f"preprocess-jsonl-local-{n}"
        manifest = json.loads((shards / "manifest.json").read_text())
        rows = manifest["counts"]["written"]
        spec = {
            "name": f"scale-{n}",
            "storage_path": str(work / "out" / "runs"),
            "stage": "finetune",
            "data": str(shards),
            "model": "tiny",
            "epochs": 1,
            "scaling": {"num_workers": TRAIN_WORKERS},
            "deepspeed": {"precision": "fp32", "micro_batch_size": TRAIN_MICRO},
            "optimizer": {"lr": 1e-3},
            "checkpoint_every": 200,
            "log_every": 50,
        }
        variant = "shuffled"
        if n == top and top > second:
            # The largest size trains as many rows as the second's epoch, drawn from all of it.
            second_rows = json.loads(
                (work / "out" / f"preprocess-jsonl-local-{second}" / "manifest.json").read_text()
            )["counts"]["written"]
            spec["max_steps"] = math.ceil(second_rows / (TRAIN_MICRO * TRAIN_WORKERS))
        run_dir = work / "out" / "runs" / spec["name"]
        _clear(run_dir)
        path = write_spec(work / "specs" / f"train-{n}.yaml", spec)
        result = run_job(["train", path], job_env())
        trained = _rows_trained(run_dir, rows)
        files, size, largest = files_under(run_dir)
        print(f"train {n}: {result['wall_s']:.1f} s, {trained} rows", flush=True)
        results.append(_row("train", variant, n, trained, result, files, size, largest))
    return results


def _rows_trained(run_dir: Path, epoch_rows: int) -> int:
    """Rows the run trained on: its last step times the global batch, at most one epoch."""
    from pipelines.spec import StorageOptions
    from pipelines.train.run_folder import RunFolder

    steps = max(r.step for r in RunFolder(str(run_dir), StorageOptions()).read_metrics())
    return min(epoch_rows, steps * TRAIN_MICRO * TRAIN_WORKERS)


def infer(sizes, work: Path, images: Path) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = tiny_model(work / "tiny-model")
    results = []
    base = {
        "model": {"path": model},
        "max_new_tokens": 4,
        "batch_size": 32,
        "concurrency": 2,
        "num_cpus": 1,
        "prompt": "What colour is the square?",
    }
    for n in sizes:
        folder = linked_folder(images, work / f"images-{n}", n)
        table = work / f"rows-{n}.parquet"
        if not table.exists():
            ids = [f"{i:06d}" for i in range(n)]
            pq.write_table(
                pa.table(
                    {
                        "id": ids,
                        "image": [str(images / f"{i}.jpg") for i in ids],
                        "prompt": ["What colour is the square?"] * n,
                    }
                ),
                table,
            )
        for variant, inputs in (("folder", str(folder)), ("table", str(table))):
            out = work / "out" / f"infer-{variant}-{n}"
            spec = {**base, "inputs": [inputs], "output": str(out), "answers_jsonl": True}
            _clear(out)
            path = write_spec(work / "specs" / f"infer-{variant}-{n}.yaml", spec)
            result = run_job(["infer", path], job_env())
            files, size, largest = files_under(out)
            print(f"infer {variant} {n}: {result['wall_s']:.1f} s", flush=True)
            results.append(_row("infer", variant, n, n, result, files, size, largest))
    results.append(resume(max(sizes), work, base))
    return results


def resume(n: int, work: Path, base: dict) -> dict:
    """A folder infer killed once half its rows are written, and the run that resumes it."""
    import pyarrow.parquet as pq

    out = work / "out" / f"infer-resume-{n}"
    _clear(out)
    spec = {**base, "inputs": [str(work / f"images-{n}")], "output": str(out)}
    path = write_spec(work / "specs" / f"infer-resume-{n}.yaml", spec)
    parts = out / "parts"

    def half_written() -> bool:
        if not parts.exists():
            return False
        rows = 0
        for name in os.listdir(parts):
            try:
                rows += pq.ParquetFile(parts / name).metadata.num_rows
            except Exception:  # a file being written
                continue
        return rows >= n // 2

    first = run_job(["infer", path], job_env(), stop_when=half_written)
    skip_s, done = _skip_cost(path)
    second = run_job(["infer", path], job_env())
    summary = json.loads((out / "summary.json").read_text())
    files, size, largest = files_under(out)
    print(
        f"infer resume {n}: first half {first['wall_s']:.1f} s, resumed run "
        f"{second['wall_s']:.1f} s (skipping {done} done rows: {skip_s:.2f} s)",
        flush=True,
    )
    row = _row("infer", "resume", n, n - summary["resumed_rows"], second, files, size, largest)
    row |= {
        "first_half_s": first["wall_s"],
        "first_half_rows": summary["resumed_rows"],
        "skip_s": skip_s,
        "skip_share": skip_s / first["wall_s"],
    }
    return row


def _skip_cost(spec_path: str) -> tuple[float, int]:
    """What a resume does before it generates: list the rows, read the ids already written,
    and take them out (the same calls as the job's)."""
    import pyarrow.compute as pc

    from pipelines.infer.output import read_output
    from pipelines.infer.rows import list_rows
    from pipelines.infer.spec import InferSpec
    from pipelines.spec import load_spec

    spec = load_spec(InferSpec, spec_path)
    start = time.perf_counter()
    rows = list_rows(spec)
    done = read_output(spec, columns=("id",), repair=True)
    todo = rows.filter(pc.invert(pc.is_in(rows.column("id"), value_set=done.column("id"))))
    assert len(todo) < len(rows)
    return time.perf_counter() - start, len(rows) - len(todo)


def _clear(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def evaluate(sizes, work: Path) -> list[dict]:
    from eval import pope_files

    results = []
    for n in sizes:
        rng = random.Random(n)
        for variant in ("pope", "custom"):
            folder = work / f"eval-{variant}-{n}"
            fields = pope_files(folder, n, rng) if variant == "pope" else custom_files(folder, n)
            out = work / "out" / f"eval-{variant}-{n}"
            _clear(out)
            path = write_spec(
                work / "specs" / f"eval-{variant}-{n}.yaml", {**fields, "output": str(out)}
            )
            result = run_job(["eval", path], job_env())
            report = json.loads((out / "report.json").read_text())
            files, size, largest = files_under(out)
            print(f"eval {variant} {n}: {result['wall_s']:.1f} s, n={report['n']}", flush=True)
            results.append(_row("eval", variant, n, report["n"], result, files, size, largest))
    return results


def custom_files(folder: Path, n: int) -> dict:
    """A custom question file (id, image, question, answer, type) and an answers file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(n)
    colours = ["red", "green", "blue", "yellow"]
    with open(folder / "questions.jsonl", "w") as q, open(folder / "answers.jsonl", "w") as a:
        for i in range(n):
            answer = rng.choice(colours)
            q.write(
                json.dumps(
                    {
                        "question_id": i,
                        "image": f"{i:06d}.jpg",
                        "text": "What colour is the square?",
                        "answer": answer,
                        "question_type": "colour",
                    }
                )
                + "\n"
            )
            a.write(json.dumps({"question_id": i, "text": rng.choice(colours)}) + "\n")
    return {
        "benchmark": "custom",
        "questions": str(folder / "questions.jsonl"),
        "answers": str(folder / "answers.jsonl"),
    }


def _row(job, variant, n, rows, result, files, size, largest) -> dict:
    return {
        "job": job,
        "variant": variant,
        "n": n,
        "rows": rows,
        "wall_s": result["wall_s"],
        "rows_per_s": rows / result["wall_s"],
        "driver_rss": result["driver_rss"],
        "worker_rss": result["worker_rss"],
        "worker": result["worker"],
        "files": files,
        "bytes": size,
        "largest_file": largest,
    }


# ---- the report --------------------------------------------------------------------------------


JOB_ORDER = ("preprocess", "train", "infer", "eval")


def report(results: list[dict], plot: Path | None) -> None:
    results = sorted(results, key=lambda r: (JOB_ORDER.index(r["job"]), r["variant"], r["n"]))
    print()
    print(
        f"{'job':<11}{'variant':<16}{'n':>8}{'wall s':>9}{'rows/s':>9}{'driver MB':>11}"
        f"{'worker MB':>11}  {'largest worker':<28}{'files':>7}{'MB':>9}{'largest MB':>11}"
    )
    for r in results:
        print(
            f"{r['job']:<11}{r['variant']:<16}{r['n']:>8}{r['wall_s']:>9.1f}{r['rows_per_s']:>9.1f}"
            f"{r['driver_rss'] / 1e6:>11.0f}{r['worker_rss'] / 1e6:>11.0f}  {r['worker'][:28]:<28}"
            f"{r['files']:>7}{r['bytes'] / 1e6:>9.1f}{r['largest_file'] / 1e6:>11.2f}"
        )
        if "skip_s" in r:
            print(
                f"{'':<27}resume: skipping {r['first_half_rows']} done rows took "
                f"{r['skip_s']:.2f} s, {100 * r['skip_share']:.1f}% of the first half's "
                f"{r['first_half_s']:.1f} s"
            )
    print()
    print("ratios, 100x over 10x (goals: rows/s >= 0.8; peak memory <= 1.5):")
    by_key = {(r["job"], r["variant"], r["n"]): r for r in results}
    sizes = sorted({r["n"] for r in results})
    if len(sizes) >= 2:
        big, mid = sizes[-1], sizes[-2]
        for (job, variant, n), r in by_key.items():
            other = by_key.get((job, variant, mid))
            if n != big or other is None:
                continue
            workers = f"{r['worker_rss'] / other['worker_rss']:.2f}" if other["worker_rss"] else "-"
            print(
                f"  {job:<11}{variant:<16} rows/s {r['rows_per_s'] / other['rows_per_s']:.2f}  "
                f"driver {r['driver_rss'] / other['driver_rss']:.2f}  worker {workers}"
            )
    if plot is not None:
        draw(results, plot)


def draw(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        if r["variant"] != "resume":
            series.setdefault((r["job"], r["variant"]), []).append(r)
    for (job, variant), rows in sorted(series.items()):
        rows.sort(key=lambda r: r["n"])
        n = [r["n"] for r in rows]
        left.plot(n, [r["rows_per_s"] for r in rows], marker="o", label=f"{job}: {variant}")
        peak = [max(r["driver_rss"], r["worker_rss"]) / 1e6 for r in rows]
        right.plot(n, peak, marker="o", label=f"{job}: {variant}")
    for ax, title, label in (
        (left, "rows/s (level or rising: cost linear in the work)", "rows/s"),
        (right, "largest process's peak RSS", "MB"),
    ):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("records / rows / images / answers (train: rows in the dataset)")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--s3-sizes", default="1000,10000,100000")
    parser.add_argument("--jobs", default="preprocess,train,infer,eval")
    parser.add_argument("--work", default="/tmp/stf-bench-scale")
    parser.add_argument("--results", help="results JSON (default: WORK/bench-scale.json)")
    parser.add_argument("--plot", default=str(ROOT / "docs" / "scale.png"))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    s3_sizes = [int(s) for s in args.s3_sizes.split(",") if s]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results or work / "bench-scale.json")
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    jobs = [j for j in args.jobs.split(",") if j]  # none: redraw the report from --results

    images = work / "images"
    started = time.perf_counter()
    make_images(images, max(sizes + s3_sizes))
    print(f"images ready in {time.perf_counter() - started:.0f} s", flush=True)

    def keep(new: list[dict]) -> None:
        done = {(r["job"], r["variant"], r["n"]) for r in new}
        results[:] = [r for r in results if (r["job"], r["variant"], r["n"]) not in done] + new
        results_path.write_text(json.dumps(results, indent=1))

    for job in jobs:
        if job == "preprocess":
            keep(preprocess(sizes, s3_sizes, work, images))
        elif job == "train":
            keep(train(sizes, work))
        elif job == "infer":
            keep(infer(sizes, work, images))
        elif job == "eval":
            keep(evaluate(sizes, work))
        else:
            raise SystemExit(f"unknown job {job!r}")
    report(results, Path(args.plot) if args.plot else None)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
