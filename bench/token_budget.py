"""The token-budget map: quality vs vision tokens, with prefill speed-up.

By default on the demo recipe: trains the demo (synthetic corpus, tiny preset, the same steps and
seed: examples/train-*.yaml) once per configuration: STF windows 1, 2, 3 and 4 with MBTF (the
preset's four blocks), and window 2 without MBTF (one block, -2, as LLaVA-1.5). The Parquet shards
are built once and shared: they store one image placeholder, and each model's collator expands it
to its own token count. Each model is scored on the held-out split with `stf eval` and its prefill
(one image + 32 text tokens, KV cache on, first token) is timed in this process. Writes a Markdown
table and a PNG plot.

On a real benchmark, with models you trained: `--models NAME=DIR,...` (their configs give window,
blocks and tokens) and the benchmark's files as an eval spec names them; each model is scored by
`stf eval` (its headline is the map's y axis):

    python bench/token_budget.py [--n 1000] [--pretrain-epochs 3] [--finetune-epochs 20]
        [--configs w1,w2,w3,w4,w2-single] [--out docs]
    python bench/token_budget.py --models w1=runs/w1/model,w2=runs/w2/model --benchmark pope
        --questions eval/pope/llava_pope_test.jsonl --annotations eval/pope/coco
        --images eval/pope/val2014 [--limit 500] --out docs/pope
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import ray
import torch

from pipelines.ray_env import start_local_ray

sys.path.insert(0, os.path.dirname(__file__))
from prefill import first_token, inputs_for, llm_shape  # noqa: E402 (the sibling bench script)

CONFIGS = {
    "w1": {"stf_window": 1},
    "w2": {"stf_window": 2},
    "w3": {"stf_window": 3},
    "w4": {"stf_window": 4},
    "w2-single": {"stf_window": 2, "vision_feature_layer": -2},
}


def prefill_ms(model_dir: str, repeats: int = 30, wide: bool = False) -> float:
    """Fastest of ``repeats`` prefills (the least disturbed by the machine), on a GPU when there
    is one. ``wide``: the same vision side and token count with a random 8x512 LLM, where the
    LLM's share is realistic (for the tiny demo models)."""
    from stf_model import STFForConditionalGeneration, load_model_dir, preset_config

    if wide:
        with open(f"{model_dir}/config.json") as f:
            trained = json.load(f)
        config = preset_config(
            "tiny",
            stf_window=trained["stf_window"],
            vision_feature_layer=trained["vision_feature_layer"],
            **llm_shape("8x512"),
        )
        torch.manual_seed(0)
        model = STFForConditionalGeneration(config)
    else:
        model, _ = load_model_dir(model_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.eval().to(device)
    ids, pixels = inputs_for(model.config, 32, device)
    for _ in range(3):
        first_token(model, ids, pixels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        first_token(model, ids, pixels)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="training images (demo: 1000)")
    parser.add_argument("--pretrain-epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=20)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--models", help="NAME=DIR,... : your trained models (no training)")
    parser.add_argument("--benchmark", default="custom", help="as in an eval spec")
    parser.add_argument("--questions", help="the benchmark's question file")
    parser.add_argument("--annotations", nargs="*", default=None, help="its ground truth")
    parser.add_argument("--images", help="its image folder")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--work", default="bench_out/token_budget")
    parser.add_argument("--out", default="docs")
    return parser.parse_args()


def train_demo_models(args: argparse.Namespace, work: str) -> dict[str, str]:
    """The demo recipe once per configuration (trained before: reused); name -> model dir."""
    from pipelines.preprocess import PreprocessSpec
    from pipelines.preprocess.job import run as preprocess
    from pipelines.spec import load_spec
    from pipelines.synth.corpus import write_corpus
    from pipelines.train import TrainSpec
    from pipelines.train.job import run as train

    corpus = f"{work}/corpus"
    if not os.path.exists(f"{corpus}/synth.json"):
        write_corpus(corpus, n=args.n, seed=0)
    for stage, source in (("pretrain", "pretrain.json"), ("finetune", "finetune.jsonl")):
        spec = load_spec(
            PreprocessSpec,
            f"examples/preprocess-{stage}.yaml",
            [f"inputs={corpus}/{source}", f"output={work}/shards/{stage}"],
        )
        preprocess(spec)
    models = {}
    for name in args.configs.split(","):
        models[name] = f"{work}/runs/{name}-finetune/model"
        if os.path.exists(f"{models[name]}/config.json"):
            continue
        for stage, epochs in (
            ("pretrain", args.pretrain_epochs),
            ("finetune", args.finetune_epochs),
        ):
            sets = [
                f"name={name}-{stage}",
                f"storage_path={work}/runs",
                f"data={work}/shards/{stage}",
                f"epochs={epochs}",
            ]
            if stage == "pretrain":
                sets.append(f"model_overrides={json.dumps(CONFIGS[name])}")
            else:
                sets.append(f"init_from={work}/runs/{name}-pretrain/model")
            train(load_spec(TrainSpec, f"examples/train-{stage}.yaml", sets))
    args.questions = args.questions or f"{corpus}/eval.jsonl"
    return models


def score(name: str, model_dir: str, args: argparse.Namespace, work: str) -> dict:
    """The model's `stf eval` report on the benchmark (scored before: reused)."""
    from pipelines.eval.job import run as evaluate
    from pipelines.eval.spec import EvalSpec

    output = f"{work}/eval/{args.benchmark}/{name}"
    if not os.path.exists(f"{output}/report.json"):
        evaluate(
            EvalSpec.model_validate(
                {
                    "benchmark": args.benchmark,
                    "model": {"path": model_dir},
                    "questions": args.questions,
                    "annotations": args.annotations,
                    "images": args.images,
                    "limit": args.limit,
                    "output": output,
                    "inference": {"max_new_tokens": 8, "batch_size": 32, "concurrency": 2},
                }
            )
        )
    with open(f"{output}/report.json") as f:
        return json.load(f)


def row_of(name: str, model_dir: str, report: dict) -> dict:
    with open(f"{model_dir}/config.json") as f:
        config = json.load(f)
    layers = config["vision_feature_layer"]
    vision = config["vision_config"]
    grid = vision["image_size"] // vision["patch_size"]
    main = ("score", "f1", "accuracy")
    return {
        "config": name,
        "window": config["stf_window"],
        "blocks": len(layers) if isinstance(layers, list) else 1,
        "vision_tokens": (grid // config["stf_window"]) ** 2,
        "score": report["score"],
        "headline": report["headline"],
        "title": report["title"],
        "by_category": {
            k: next(v[m] for m in main if m in v) for k, v in report["breakdown"].items()
        },
        "baselines": {
            k: report["metrics"][k] for k in ("chance", "majority") if k in report["metrics"]
        },
        "model_dir": model_dir,
    }


def main() -> None:
    args = parse_args()
    work = os.path.abspath(args.work)
    start_local_ray(include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.models:
        models = dict(pair.split("=", 1) for pair in args.models.split(","))
    else:
        models = train_demo_models(args, work)
    rows = []
    for name, model_dir in models.items():
        rows.append(row_of(name, model_dir, score(name, model_dir, args, work)))
        print(json.dumps(rows[-1]), flush=True)
    ray.shutdown()
    # Prefill after all training, on a quiet machine, in interleaved rounds so that drift in the
    # machine's load spreads over every model alike. The 8x512 variant is for the tiny models.
    kinds = [("prefill_ms", False)] + ([] if args.models else [("prefill_wide_ms", True)])
    for key, wide in kinds:
        timings: dict[str, list[float]] = {r["config"]: [] for r in rows}
        for _ in range(3):
            for r in rows:
                timings[r["config"]].append(prefill_ms(r["model_dir"], repeats=20, wide=wide))
        for r in rows:
            r[key] = statistics.median(timings[r["config"]])
    write_outputs(rows, args)


def write_outputs(rows: list[dict], args: argparse.Namespace) -> None:
    """token_budget.md and token_budget.png in ``args.out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The 8x512 LLM's prefill where it was measured (the demo), else the model's own.
    key = "prefill_wide_ms" if "prefill_wide_ms" in rows[0] else "prefill_ms"
    slowest = {k: max(r[k] for r in rows) for k in ("prefill_ms", key)}
    headline, title = rows[0]["headline"], rows[0]["title"]
    wide = " | prefill ms with an 8x512 LLM (speed-up)" if key == "prefill_wide_ms" else ""
    lines = [
        f"| config | STF window | MBTF blocks | vision tokens | {title}: {headline} "
        f"| prefill ms (speed-up){wide} | by category |",
        "|---|---|---|---|---|---|" + ("---|" if wide else "") + "---|",
    ]
    for r in rows:
        parts = ", ".join(f"{t} {a:.1f}" for t, a in r["by_category"].items())
        cells = [
            r["config"],
            str(r["window"]),
            str(r["blocks"]),
            str(r["vision_tokens"]),
            f"{r['score']:.1f}",
            f"{r['prefill_ms']:.2f} ({slowest['prefill_ms'] / r['prefill_ms']:.2f}x)",
        ]
        if wide:
            cells.append(f"{r[key]:.2f} ({slowest[key] / r[key]:.2f}x)")
        lines.append("| " + " | ".join([*cells, parts]) + " |")
    baselines = rows[0]["baselines"]
    if baselines:
        lines.append(
            f"\nBaselines on the same split: chance {baselines['chance']:.1f}, "
            f"majority answer {baselines['majority']:.1f}."
        )
    command = "python bench/token_budget.py " + " ".join(sys.argv[1:])
    lines.append(f"\n`{command.strip()}`")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "token_budget.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        ax.scatter(
            r["vision_tokens"],
            r["score"],
            marker="o" if r["blocks"] > 1 else "s",
            s=60,
            color="tab:blue" if r["blocks"] > 1 else "tab:orange",
        )
        llm = " (8x512 LLM)" if wide else ""
        ax.annotate(
            f"{r['config']}\n{slowest[key] / r[key]:.2f}x prefill{llm}",
            (r["vision_tokens"], r["score"]),
            textcoords="offset points",
            xytext=(6, 4),
            fontsize=8,
        )
    if baselines:
        ax.axhline(baselines["chance"], color="grey", linestyle="--", linewidth=1, label="chance")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("vision tokens per image (log)")
    ax.set_ylabel(f"{title}: {headline}", fontsize=8)
    ax.set_title(
        f"LLaVA-STF on {title}: quality vs vision tokens (circles MBTF, squares one block)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "token_budget.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    main()
