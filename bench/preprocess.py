"""Preprocess throughput: the Ray Data job vs the single-process floor, on the same corpus.

The floor is the same work in a plain loop with no Ray: parse, read + decode + pad/resize the
image, render + tokenise + check the mask, and write Parquet. Both read the synthetic corpus with
realistic photos' geometry (640x480 JPEGs by default) into a 336 px tower (LLaVA-1.5's), with the
tiny tokenizer. Reported: records/s, records/s per core, and the per-core ratio (goal >= 0.8),
end to end, and in steady state: minus the job's fixed cost (Ray Data planning, actor start-up:
each worker imports torch/transformers and loads the tokenizer), measured in the same run as the
time the job takes on a 20-record corpus.

    python bench/preprocess.py [--n 2000] [--image-size 640x480] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import run
from pipelines.preprocess.processor import RecordProcessor
from pipelines.ray_env import start_local_ray
from pipelines.shards import SHARD_SCHEMA
from pipelines.storage import read_many
from pipelines.synth.corpus import write_corpus
from stf_model import build_tiny_tokenizer, preset_config


def make_model_dir(path: str, image_size: int) -> None:
    """Config + tokenizer of a tiny LLM behind a CLIP-L/14-sized input (no weights needed)."""
    config = preset_config("tiny", **{"vision.image_size": image_size, "vision.patch_size": 14})
    config.save_pretrained(path)
    build_tiny_tokenizer().save_pretrained(path)


def floor(spec: PreprocessSpec, out_dir: str) -> int:
    """The single-process floor: the job's own per-record work, in a loop, written to Parquet."""
    processor = RecordProcessor(spec)  # the same code path, called directly: no Ray, no actors
    path = spec.inputs[0]
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, start=1):
            raw = {"source": path, "index": line_no - 1, "line": line_no, "raw": line}
            parsed = processor.parse({**raw, "error": None, "file_records": None})
            images = read_many([parsed.url] if parsed.url else [], spec.storage)
            sample = processor.sample(parsed, images)
            rows.append({"id": parsed.record_id, "source": path, "index": line_no - 1, **sample})
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    pq.write_table(table, posixpath.join(out_dir, "floor.parquet"), compression="zstd")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="training images in the corpus")
    parser.add_argument("--image-size", default="640x480")
    parser.add_argument("--tower", type=int, default=336, help="vision tower input size")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    width, height = (int(x) for x in args.image_size.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(f"{tmp}/corpus", n=args.n, seed=0, width=width, height=height, n_eval=0)
        write_corpus(f"{tmp}/small", n=20, seed=1, width=width, height=height, n_eval=0)
        make_model_dir(f"{tmp}/model", args.tower)
        spec = PreprocessSpec(
            inputs=[f"{tmp}/corpus/finetune.jsonl"],
            output=f"{tmp}/out",
            model=f"{tmp}/model",
            workers=args.workers,
            rows_per_shard=256,
        )
        os.makedirs(f"{tmp}/floor")
        start = time.perf_counter()
        n_floor = floor(spec, f"{tmp}/floor")
        t_floor = time.perf_counter() - start

        start_local_ray(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        results, fixed = {}, {}
        for workers in sorted({1, args.workers}):
            small = {"inputs": [f"{tmp}/small/finetune.jsonl"], "output": f"{tmp}/small-out"}
            start = time.perf_counter()
            run(spec.model_copy(update={"workers": workers, "overwrite": True, **small}))
            fixed[workers] = time.perf_counter() - start
            start = time.perf_counter()
            manifest = run(spec.model_copy(update={"workers": workers, "overwrite": True}))
            results[workers] = (manifest.counts.written, time.perf_counter() - start)
        ray.shutdown()

    floor_rate = n_floor / t_floor
    print(
        f"corpus: {n_floor} records ({args.n} {width}x{height} JPEGs + text-only) -> {args.tower} px"
    )
    header = f"{'path':<30}{'cores':>6}{'records/s':>11}{'per core':>10}{'ratio/core':>12}"
    print(header + f"{'fixed s':>9}{'steady ratio/core':>19}")
    print(f"{'single-process floor':<30}{1:>6}{floor_rate:>11.1f}{floor_rate:>10.1f}{1.0:>12.2f}")
    report = {"floor_rps": round(floor_rate, 1)}
    for workers, (n, seconds) in results.items():
        assert n == n_floor, (n, n_floor)
        rate = n / seconds
        steady = n / max(seconds - fixed[workers], 1e-9) / workers / floor_rate
        print(
            f"{f'Ray Data job, {workers} worker(s)':<30}{workers:>6}{rate:>11.1f}"
            f"{rate / workers:>10.1f}{rate / workers / floor_rate:>12.2f}"
            f"{fixed[workers]:>9.1f}{steady:>19.2f}"
        )
        report[f"ray_{workers}"] = {"rps": round(rate, 1), "fixed_s": round(fixed[workers], 1)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
