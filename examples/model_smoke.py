"""Build, save, reload and run a tiny random LLaVA-STF model end to end (CPU, no downloads).

    python examples/model_smoke.py [--out DIR]

Until the Ray pipelines land this is what `make demo` runs: it exercises the whole library path a
served request takes (chat template -> processor -> uint8 pixels -> STF projector -> generate).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from PIL import Image, ImageDraw

from stf_model import build_tiny, load_model_dir, save_model_dir


def shapes_image() -> Image.Image:
    image = Image.new("RGB", (160, 120), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 60, 60), fill="red")
    draw.rectangle((90, 50, 150, 110), fill="blue")
    return image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", help="where to write the model directory (default: a temp dir)")
    args = parser.parse_args()

    for window in (1, 2, 3, 4):
        model, _ = build_tiny(stf_window=window)
        print(f"window {window}: {model.config.num_image_tokens:3d} vision tokens per image")

    start = time.perf_counter()
    model, tokenizer = build_tiny(seed=0)
    out_dir = args.out or tempfile.mkdtemp(prefix="stf-tiny-")
    save_model_dir(model, tokenizer, out_dir)
    model, processor = load_model_dir(out_dir)
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": "What shapes are there?"}],
        }
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(images=shapes_image(), text=prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    print(f"model dir: {out_dir}")
    print(
        f"prompt tokens: {inputs['input_ids'].shape[1]} ({model.config.num_image_tokens} of them vision)"
    )
    print(f"generated (random weights, so not meaningful): {answer!r}")
    print(f"build + save + load + generate: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
