"""Batch inference throughput: the `stf infer` Ray Data job vs a plain single-process loop.

Both read the same JPEG folder, decode each image, and generate with the same batch size and
greedy budget on the same model. The plain loop is one process using every core's threads; the
Ray job runs one replica per CPU (each with that many threads) and includes its start-up (model
load in each replica): it is reported end to end and in steady state, where the fixed start-up is
measured by the same job on one batch per replica.

    python bench/infer.py [--images 256] [--batch-size 16] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import ray
import torch
from PIL import Image

from pipelines.ray_env import start_local_ray


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--model", help="model directory (default: a random tiny model)")
    args = parser.parse_args()

    from pipelines.infer import InferSpec
    from pipelines.infer.job import run as infer
    from pipelines.infer.rows import list_rows
    from pipelines.models import load_generator
    from pipelines.spec import InferenceModel, StorageOptions
    from stf_model import build_tiny, save_model_dir
    from stf_model.generation import ChatPrompt, SamplingParams
    from stf_model.processing import decode_image

    tmp = tempfile.mkdtemp(prefix="bench-infer-")
    model_dir = args.model or f"{tmp}/tiny"
    if not args.model:
        save_model_dir(*build_tiny(seed=0), model_dir)
    os.makedirs(f"{tmp}/images")
    for i in range(args.images):
        Image.effect_noise((320, 240), 40 + i % 50).convert("RGB").save(f"{tmp}/images/{i:05d}.jpg")
    cores = os.cpu_count() or 1

    def spec(output: str, concurrency: int, limit: int | None = None) -> InferSpec:
        return InferSpec(
            model=InferenceModel(path=model_dir),
            inputs=[f"{tmp}/images"],
            output=output,
            max_new_tokens=args.max_tokens,
            batch_size=args.batch_size,
            concurrency=concurrency,
            num_cpus=cores // concurrency,
            limit=limit,
        )

    # Plain loop: one process, all cores.
    torch.set_num_threads(cores)
    generator = load_generator(InferenceModel(path=model_dir), StorageOptions())
    rows = list_rows(spec(f"{tmp}/unused", 1)).to_pylist()
    params = SamplingParams(args.max_tokens, temperature=0)
    start = time.perf_counter()
    for i in range(0, len(rows), args.batch_size):
        chunk = rows[i : i + args.batch_size]
        prompts = []
        for row in chunk:
            with open(row["image"], "rb") as f:
                image = decode_image(f.read(), 40_000_000)
            messages = [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": row["prompt"]}],
                }
            ]
            prompts.append(ChatPrompt(generator.render(messages), [image], params))
        generator.generate(prompts)
    plain = len(rows) / (time.perf_counter() - start)

    start_local_ray(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = {}
    for concurrency in sorted({1, cores}):
        # The fixed start-up (planning, replicas importing torch and loading the model): the same
        # job on one batch per replica.
        small = args.batch_size * concurrency
        fixed = infer(spec(f"{tmp}/small-{concurrency}", concurrency, small)).seconds
        seconds = infer(spec(f"{tmp}/out-{concurrency}", concurrency)).seconds
        steady = (len(rows) - small) / max(seconds - fixed, 1e-9)
        results[concurrency] = {
            "end_to_end": len(rows) / seconds,
            "fixed_s": fixed,
            "steady": steady,
        }
    ray.shutdown()

    print(
        f"{len(rows)} images (320x240 JPEG), batch {args.batch_size}, {args.max_tokens} greedy tokens"
    )
    print(
        f"{'path':<40}{'images/s':>10}{'vs plain':>10}{'fixed s':>9}{'steady/s':>10}{'vs plain':>10}"
    )
    print(f"{f'plain loop, 1 process x {cores} threads':<40}{plain:>10.1f}{1.0:>10.2f}")
    for concurrency, r in results.items():
        label = f"stf infer, {concurrency} replica(s) x {cores // concurrency} CPU"
        print(
            f"{label:<40}{r['end_to_end']:>10.1f}{r['end_to_end'] / plain:>10.2f}"
            f"{r['fixed_s']:>9.1f}{r['steady']:>10.1f}{r['steady'] / plain:>10.2f}"
        )
    print(json.dumps({"plain": plain, "ray": results}))


if __name__ == "__main__":
    main()
