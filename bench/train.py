"""Training step time: a Ray Train + DeepSpeed worker vs a plain single-process PyTorch loop on the
same model, rows and micro batch; then 2 workers vs 1.

Both paths train the finetune stage of the same model (fp32 on CPU) on the same synthetic shards
with the same collator and AdamW, with the same number of CPU threads: Ray gives a worker
OMP_NUM_THREADS = the CPUs it reserves (`scaling.resources_per_worker`), so the plain loop is run
with `torch.set_num_threads` of that count. Both 1 thread and every core are measured. The plain loop reads rows from memory; the Ray path streams
them through Ray Data, so its time includes data waits. The first `--skip` steps of each run are
warm-up and are left out; the Ray step time comes from the run's own metrics (samples/s per
window of `--window` steps).

    python bench/train.py [--steps 40] [--micro 16] [--text-layers 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time

import pyarrow.parquet as pq
import ray
import torch

from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import run as preprocess
from pipelines.ray_env import start_local_ray
from pipelines.shards import read_manifest, shard_urls
from pipelines.synth.corpus import write_corpus
from pipelines.train import TrainSpec
from pipelines.train.job import run as train
from pipelines.train.model import build_model
from pipelines.train.run_folder import RunFolder
from stf_model.collate import collate, length_grouped_batches


def plain_step_seconds(spec: TrainSpec, data: str, steps: int, skip: int, threads: int) -> float:
    """Median seconds per optimizer step of a plain PyTorch loop (no Ray, no DeepSpeed)."""
    torch.set_num_threads(threads)
    rows = [
        r for url in shard_urls(data, read_manifest(data)) for r in pq.read_table(url).to_pylist()
    ]
    model, _ = build_model(spec)
    model.set_trainable_stage(spec.stage)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.lr, fused=True
    )
    config = model.config
    batches = length_grouped_batches(
        rows * 4, spec.deepspeed.micro_batch_size, 16, random.Random(0)
    )
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        batch = collate(
            next(batches),
            image_token_id=config.image_token_index,
            num_image_tokens=config.num_image_tokens,
            pad_token_id=3,
            image_size=config.vision_config.image_size,
        )
        model(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.deepspeed.gradient_clipping)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[skip:])


def ray_step_seconds(spec: TrainSpec) -> float:
    """Seconds per optimizer step of a Ray Train run, from its metrics after the first window."""
    train(spec)
    rows = RunFolder(spec.run_dir, spec.storage).read_metrics()[1:]
    global_batch = spec.deepspeed.micro_batch_size * spec.scaling.num_workers
    return statistics.median(global_batch / r.samples_per_s for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=10)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--text-layers", type=int, default=2, help="widen the tiny LLM's depth")
    args = parser.parse_args()

    start_local_ray(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory() as tmp:
        write_corpus(f"{tmp}/corpus", n=1500, seed=0, n_eval=0)
        data = f"{tmp}/shards"
        preprocess(PreprocessSpec(inputs=[f"{tmp}/corpus/finetune.jsonl"], output=data))

        def spec(name: str, workers: int, cpus: int = 1) -> TrainSpec:
            return TrainSpec(
                name=name,
                storage_path=f"{tmp}/runs",
                stage="finetune",
                data=[data],
                model_overrides={"text.num_hidden_layers": args.text_layers},
                max_steps=args.steps,
                log_every=args.window,
                checkpoint_every=10**6,
                scaling={"num_workers": workers, "resources_per_worker": {"CPU": cpus}},
                deepspeed={"zero_stage": 2, "precision": "fp32", "micro_batch_size": args.micro},
                optimizer={"lr": 1e-4},
            )

        cores = int(ray.cluster_resources()["CPU"])
        rows = []  # (label, seconds per step, workers, plain seconds to compare with or None)
        for threads in sorted({1, cores}):
            plain = plain_step_seconds(spec("plain", 1), data, args.steps, args.skip, threads)
            one = ray_step_seconds(spec(f"one-{threads}", 1, threads))
            rows.append((f"plain PyTorch, {threads} thread(s)", plain, 1, None))
            rows.append((f"Ray Train + DeepSpeed, 1 worker x {threads} CPU", one, 1, plain))
        one_cpu = rows[1][1]
        two = ray_step_seconds(spec("two", 2))
        rows.append(("Ray Train + DeepSpeed, 2 workers x 1 CPU", two, 2, None))
    ray.shutdown()

    micro = args.micro
    print(f"{'path':<44}{'s/step':>9}{'samples/s':>11}{'vs plain':>10}")
    for label, seconds, workers, plain in rows:
        ratio = f"{seconds / plain:>10.2f}" if plain else f"{'':>10}"
        print(f"{label:<44}{seconds:>9.4f}{workers * micro / seconds:>11.1f}{ratio}")
    print(f"2 workers vs 1 worker (1 CPU each): {2 * one_cpu / two:.2f}x throughput")
    print(json.dumps({label: seconds for label, seconds, _, _ in rows}))


if __name__ == "__main__":
    main()
