"""Training at a realistic size on CPU: a ~300M-parameter LLaVA-STF (a CLIP-B/16-shaped tower at
224 px + a 12-layer, 1024-wide LLaMA-shaped LLM) finetuned with ZeRO-2, gradient checkpointing and
bf16, one Ray Train worker vs a plain PyTorch loop with the same threads (bf16 autocast, the same
checkpointing); then the worker's measured peak memory vs the pre-flight estimate, the checkpoint's
size on disk, and how much longer a run takes when it resumes from that checkpoint. Then the
same finetune with LoRA (LLaVA's r 128, alpha 256 on every linear layer of the LLM) and QLoRA
(the same over an nf4 base) beside the full one: trainable parameters, step time, peak memory
vs the estimate, checkpoint size.

    python bench/train_scale.py [--steps 10] [--skip 3] [--micro 4] [--accumulation 1,4]
                                [--variants lora,qlora]

Prints a table and a JSON line; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time

import pyarrow.parquet as pq
import ray
import torch
from transformers import CLIPVisionConfig, LlamaConfig

from pipelines.preprocess import PreprocessSpec
from pipelines.preprocess.job import run as preprocess
from pipelines.ray_env import start_local_ray
from pipelines.shards import read_manifest, shard_urls
from pipelines.synth.corpus import write_corpus
from pipelines.train import TrainSpec
from pipelines.train.arithmetic import memory_estimate
from pipelines.train.job import run as train
from pipelines.train.run_folder import MetricsRow, RunFolder
from stf_model import STFConfig, STFForConditionalGeneration, build_tiny_tokenizer, save_model_dir
from stf_model.collate import collate, length_grouped_batches


def scale_config() -> STFConfig:
    """CLIP-B/16 at 224 px (14x14 patches, window 2: 49 vision tokens) + a 12 x 1024 LLaMA."""
    vision = CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        image_size=224,
        patch_size=16,
    )
    text = LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32000,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return STFConfig(
        vision_config=vision,
        text_config=text,
        vision_feature_layer=[-2, 6],
        stf_window=2,
        image_token_index=4,  # the tiny tokenizer's <image>
    )


def plain_step_seconds(model_dir: str, data: str, spec: TrainSpec, steps: int, skip: int) -> float:
    """Median seconds per optimizer step of a plain loop: fp32 weights, bf16 autocast, fused
    AdamW, gradient checkpointing, the spec's micro batch and accumulation."""
    torch.set_num_threads(int(spec.scaling.resources_per_worker["CPU"]))
    urls = shard_urls(data, read_manifest(data))
    rows = [r for url in urls for r in pq.read_table(url).to_pylist()]
    model = STFForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    model.set_trainable_stage("finetune")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=True)
    accumulation = spec.deepspeed.gradient_accumulation
    rows = rows * (4 * accumulation * steps // len(rows) + 4)
    batches = length_grouped_batches(rows, spec.deepspeed.micro_batch_size, 16, random.Random(0))
    config, times = model.config, []
    for _ in range(steps):
        start = time.perf_counter()
        for _ in range(accumulation):
            batch = collate(
                next(batches),
                image_token_id=config.image_token_index,
                num_image_tokens=config.num_image_tokens,
                pad_token_id=3,
                image_size=config.vision_config.image_size,
            )
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(**batch).loss / accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return statistics.median(times[skip:])


def run_rows(spec: TrainSpec) -> tuple[list[MetricsRow], float]:
    started = time.perf_counter()
    train(spec)
    seconds = time.perf_counter() - started
    return RunFolder(spec.run_dir, spec.storage).read_metrics(), seconds


def checkpoint_gb(run_dir: str) -> float:
    """Size of the run's latest checkpoint folder (Ray Train's checkpoint_<time> folders)."""
    folders = sorted(
        d
        for d in os.listdir(run_dir)
        if d.startswith("checkpoint_") and os.path.isdir(os.path.join(run_dir, d))
    )
    return folder_bytes(os.path.join(run_dir, folders[-1])) / 1e9


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--skip", type=int, default=3)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--accumulation", default="1,4", help="micro-batches per step, compared")
    parser.add_argument("--variants", default="lora,qlora", help="beside the full finetune")
    args = parser.parse_args()

    cores = os.cpu_count() or 1
    start_local_ray(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = scale_config()
        torch.manual_seed(0)
        model = STFForConditionalGeneration(config).to(torch.bfloat16)
        params = sum(p.numel() for p in model.parameters())
        save_model_dir(model, build_tiny_tokenizer(), f"{tmp}/model")
        del model
        write_corpus(f"{tmp}/corpus", n=120, seed=0, n_eval=0)
        data = f"{tmp}/shards"
        spec_p = PreprocessSpec(
            inputs=[f"{tmp}/corpus/finetune.jsonl"], output=data, model=f"{tmp}/model"
        )
        longest = preprocess(spec_p).counts.longest + config.num_image_tokens - 1

        def spec(
            name: str, steps: int, accumulation: int, checkpoint_every: int, lora=None
        ) -> TrainSpec:
            return TrainSpec(
                name=name,
                storage_path=f"{tmp}/runs",
                stage="finetune",
                data=[data],
                model=f"{tmp}/model",
                max_steps=steps,
                epochs=1000,
                log_every=1,
                checkpoint_every=checkpoint_every,
                scaling={"num_workers": 1, "resources_per_worker": {"CPU": cores}},
                deepspeed={
                    "zero_stage": 2,
                    "precision": "bf16",
                    "micro_batch_size": args.micro,
                    "gradient_accumulation": accumulation,
                    "gradient_checkpointing": True,
                },
                optimizer={"lr": 1e-5},
                lora=lora,
            )

        def measured(run_spec: TrainSpec, rows: list[dict]) -> dict:
            batch = args.micro * run_spec.deepspeed.gradient_accumulation
            estimate = memory_estimate(run_spec, config, longest)
            return {
                "trainable": estimate.trainable_params,
                "step_s": statistics.median(batch / r.samples_per_s for r in rows[args.skip :]),
                "peak_gb": max(r.memory_gb for r in rows),
                "estimate_gb": estimate.total_gb,
                "checkpoint_gb": checkpoint_gb(run_spec.run_dir),
            }

        variants = {}
        for accumulation in (int(a) for a in args.accumulation.split(",")):
            run_spec = spec(f"scale-{accumulation}", args.steps, accumulation, args.steps)
            plain = plain_step_seconds(f"{tmp}/model", data, run_spec, args.steps, args.skip)
            rows, _ = run_rows(run_spec)
            batch = args.micro * accumulation
            ray_step = statistics.median(batch / r.samples_per_s for r in rows[args.skip :])
            results[accumulation] = {"plain_s": plain, "ray_s": ray_step}
            if accumulation == 1:
                variants["full"] = measured(run_spec, rows)
        estimate = memory_estimate(run_spec, config, longest)
        peak_gb = max(r.memory_gb for r in rows)
        ckpt_gb = checkpoint_gb(run_spec.run_dir)
        _, fresh_s = run_rows(spec("fresh", 2, 1, 1000))
        _, resumed_s = run_rows(run_spec.model_copy(update={"max_steps": args.steps + 2}))
        for variant in filter(None, args.variants.split(",")):
            lora = {"r": 128, "alpha": 256, "quantize": "nf4" if variant == "qlora" else None}
            lora_spec = spec(variant, args.steps, 1, args.steps, lora)
            rows, _ = run_rows(lora_spec)
            variants[variant] = measured(lora_spec, rows)
    ray.shutdown()

    print(
        f"model: {params / 1e6:.0f}M parameters ({estimate.trainable_params / 1e6:.0f}M trainable, "
        f"{config.num_image_tokens} vision tokens/image), micro batch {args.micro}, {cores} "
        "threads, ZeRO-2 + bf16 + gradient checkpointing + fused AdamW"
    )
    print(f"{'':48}{'s/step':>10}{'vs plain':>10}")
    for accumulation, r in results.items():
        label = f"x{accumulation} accumulation"
        print(f"{'plain PyTorch (bf16 autocast), ' + label:48}{r['plain_s']:>10.2f}{1.0:>10.2f}")
        ratio = r["ray_s"] / r["plain_s"]
        print(f"{'Ray Train + DeepSpeed 1 worker, ' + label:48}{r['ray_s']:>10.2f}{ratio:>10.2f}")
    print(
        f"peak training memory {peak_gb:.2f} GB vs pre-flight estimate {estimate.total_gb:.2f} GB "
        f"({peak_gb / estimate.total_gb:.2f}x; sequences up to {longest} tokens)"
    )
    print(
        f"checkpoint {ckpt_gb:.2f} GB; a run resuming it took {resumed_s:.1f} s for 2 steps, a "
        f"fresh run {fresh_s:.1f} s (resume overhead {resumed_s - fresh_s:+.1f} s)"
    )
    if len(variants) > 1:
        print(f"finetune variants (x1 accumulation, {args.steps} steps):")
        print(
            f"{'':8}{'trainable':>12}{'s/step':>9}{'peak GB':>9}{'estimate':>10}{'ratio':>7}"
            f"{'checkpoint GB':>15}"
        )
        for name, v in variants.items():
            print(
                f"{name:8}{v['trainable'] / 1e6:>11.1f}M{v['step_s']:>9.2f}{v['peak_gb']:>9.2f}"
                f"{v['estimate_gb']:>10.2f}{v['peak_gb'] / v['estimate_gb']:>7.2f}"
                f"{v['checkpoint_gb']:>15.3f}"
            )
    print(
        json.dumps(
            {
                "params": params,
                "variants": variants,
                "steps": results,
                "peak_gb": peak_gb,
                "estimate": estimate.model_dump(),
                "estimate_gb": estimate.total_gb,
                "checkpoint_gb": ckpt_gb,
                "fresh_s": fresh_s,
                "resumed_s": resumed_s,
            }
        )
    )


if __name__ == "__main__":
    main()
