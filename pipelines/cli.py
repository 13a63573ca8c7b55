"""The ``stf`` command line. Each verb parses its arguments, calls the library, reports."""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_USAGE = 2


def _parse_blocks(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--blocks takes comma-separated integers, got {text!r}"
        ) from err


def _cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from stf_model.convert import convert_published_checkpoint

    config = convert_published_checkpoint(
        args.src,
        args.dst,
        vision_tower=args.vision_tower,
        blocks=args.blocks,
        window=args.window,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
        chat_template=args.chat_template,
    )
    print(
        f"wrote {args.dst}: blocks {config.feature_layers}, window {config.stf_window}, "
        f"{config.num_image_tokens} vision tokens per image"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stf", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    convert = verbs.add_parser(
        "convert", help="convert a published LLaVA-STF checkpoint into a model directory"
    )
    convert.add_argument("src", help="directory with config.json and safetensors/.bin shards")
    convert.add_argument("dst", help="output model directory")
    convert.add_argument(
        "--vision-tower", help="local CLIP directory, when SRC has no vision weights"
    )
    convert.add_argument(
        "--blocks", type=_parse_blocks, help="MBTF hidden-state indices, e.g. -2,21,18"
    )
    convert.add_argument(
        "--window", type=int, help="STF window (default: inferred from the weights)"
    )
    convert.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="output dtype")
    convert.add_argument("--chat-template", default="vicuna_v1", choices=["vicuna_v1", "plain"])
    convert.set_defaults(func=_cmd_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        # A user's mistake (bad path, mismatched checkpoint): one clear message, no traceback.
        print(f"stf {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
