"""Time-to-first-token and prefill FLOPs of one LLM with 576 vs 144 vs 36 vision tokens.

The same LLM weights are used for every row; only the STF window (hence the vision-token count)
changes. TTFT is one forward over [BOS, image tokens, prompt] with the KV cache on, keeping the last
logits, plus the argmax: what a server does before it can stream the first token. FLOPs are counted
by torch's FlopCounterMode on the same forward (matmuls and attention; norms and activations are
not counted). ``--flops-only`` counts on the meta device, so the 7B shape needs no memory.

    python bench/prefill.py                                   # tiny preset, 24x24 grid, CPU
    python bench/prefill.py --preset llava-stf-7b --device cuda --dtype bfloat16
    python bench/prefill.py --preset llava-stf-7b --flops-only
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from stf_model import STFForConditionalGeneration, preset_config


def llm_shape(shape: str) -> dict:
    """``LAYERSxHIDDEN`` -> config overrides for an LLM of that depth and width."""
    layers, hidden = (int(x) for x in shape.split("x"))
    return {
        "text.num_hidden_layers": layers,
        "text.hidden_size": hidden,
        "text.intermediate_size": hidden * 8 // 3,
        "text.num_attention_heads": max(1, hidden // 64),
        "text.num_key_value_heads": max(1, hidden // 64),
    }


def build(preset: str, window: int, device: str, dtype: torch.dtype, llm: dict):
    overrides = {"stf_window": window, **llm}
    if preset == "tiny":  # widen the grid to the real 24x24 so token counts match 7B's
        overrides["vision.image_size"] = 24 * preset_config(preset).vision_config.patch_size
    config = preset_config(preset, **overrides)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            torch.manual_seed(0)
            model = STFForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def inputs_for(config, text_tokens: int, device: str):
    ids = (
        [1]
        + [config.image_token_index] * config.num_image_tokens
        + [10 + i % 50 for i in range(text_tokens)]
    )
    size = config.vision_config.image_size
    pixels = torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, device="cpu").to(device)
    return torch.tensor([ids], device=device), pixels


@torch.inference_mode()
def first_token(model, ids, pixels):
    out = model(input_ids=ids, pixel_values=pixels, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].argmax(-1)


@torch.inference_mode()
def count_flops(model, ids, pixels) -> tuple[float, float]:
    """(total prefill FLOPs, of which the LLM's)."""
    with FlopCounterMode(display=False) as counter:
        first_token(model, ids, pixels)
    per_module = counter.get_flop_counts()
    total = sum(per_module["Global"].values())
    llm = sum(
        sum(counts.values())
        for name, counts in per_module.items()
        if name.endswith(("model.language_model", "lm_head")) and name.count(".") <= 3
    )
    return float(total), float(llm)


def time_ttft(model, ids, pixels, repeats: int, device: str) -> float:
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for _ in range(2):
        first_token(model, ids, pixels)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        first_token(model, ids, pixels)
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument(
        "--windows", default="1,2,4", help="STF windows (24x24 grid: 576/144/36 tokens)"
    )
    parser.add_argument("--text-tokens", type=int, default=64, help="prompt tokens after the image")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--flops-only", action="store_true", help="count FLOPs on the meta device")
    parser.add_argument(
        "--llm",
        default=None,
        help="LLM shape as LAYERSxHIDDEN; default 8x512 for tiny (its 2x64 LLM is too small for "
        "prefill to dominate, as it does in real models), the preset's own otherwise",
    )
    args = parser.parse_args()

    dtype = getattr(torch, args.dtype)
    device = "meta" if args.flops_only else args.device
    shape = args.llm or ("8x512" if args.preset == "tiny" else None)
    llm = llm_shape(shape) if shape else {}
    rows, base_model = [], None
    for window in [int(w) for w in args.windows.split(",")]:
        model = build(args.preset, window, device, dtype, llm)
        if base_model is None:
            base_model = model
        else:  # the very same LLM weights in every row
            model.model.language_model = base_model.model.language_model
            model.lm_head = base_model.lm_head
        ids, pixels = inputs_for(model.config, args.text_tokens, device)
        total, llm_flops = count_flops(model, ids, pixels)
        ttft = None if args.flops_only else time_ttft(model, ids, pixels, args.repeats, device)
        rows.append((window, model.config.num_image_tokens, ids.shape[1], ttft, total, llm_flops))

    base = rows[0]
    print(
        f"preset {args.preset} (LLM {shape or 'as preset'}), device {device}, dtype {args.dtype}, {args.text_tokens} text tokens, "
        f"threads {torch.get_num_threads()}, median of {args.repeats}"
    )
    print(
        f"{'window':>6} {'vision tok':>10} {'seq len':>7} {'TTFT ms':>9} {'TTFT speed-up':>13} "
        f"{'prefill GFLOP':>13} {'LLM GFLOP':>10} {'FLOP ratio':>10}"
    )
    for window, tokens, seq, ttft, total, llm in rows:
        ttft_ms = f"{ttft * 1e3:9.2f}" if ttft is not None else f"{'-':>9}"
        speed = f"{base[3] / ttft:12.2f}x" if ttft is not None else f"{'-':>13}"
        print(
            f"{window:>6} {tokens:>10} {seq:>7} {ttft_ms} {speed} {total / 1e9:13.2f} "
            f"{llm / 1e9:10.2f} {base[4] / total:9.2f}x"
        )


if __name__ == "__main__":
    main()
