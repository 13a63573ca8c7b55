"""The ``stf`` command line. Each verb parses its arguments, calls the library, reports."""

from __future__ import annotations

import argparse
import logging
import sys

EXIT_USAGE = 2
EXIT_FAILED = 1

# Job name -> "module:SpecClass"; imported lazily so `stf --help` stays fast.
SPECS = {
    "preprocess": "pipelines.preprocess:PreprocessSpec",
    "train": "pipelines.train:TrainSpec",
    "serve": "pipelines.serve:ServeSpec",
    "infer": "pipelines.infer:InferSpec",
    "eval": "pipelines.evaluate:EvalSpec",
}


def spec_class(job: str):
    """The spec model of a job (``SPECS``), imported on first use."""
    import importlib

    module, name = SPECS[job].split(":")
    return getattr(importlib.import_module(module), name)


def _add_spec_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", nargs="?", help="YAML spec file (omit to use only --set values)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a spec key, dotted for nested keys (repeatable): --set storage.region=eu-1",
    )


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


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from pipelines.preprocess import PreprocessFailed, PreprocessSpec, run
    from pipelines.spec import load_spec

    spec = load_spec(PreprocessSpec, args.spec, args.overrides)
    try:
        manifest = run(spec)
    except PreprocessFailed as err:
        print(f"stf preprocess: FAILED: {err}", file=sys.stderr)
        return EXIT_FAILED
    c = manifest["counts"]
    reasons = ", ".join(f"{r} {n}" for r, n in c["by_reason"].items()) or "none"
    state = "up to date, skipped" if manifest.get("skipped") else f"{manifest['seconds']:.1f} s"
    print(
        f"preprocess {spec.output}: read {c['read']}, written {c['written']} in "
        f"{len(manifest['shards'])} shards, quarantined {c['quarantined']} ({reasons}), "
        f"truncated {c['truncated']} [{state}]"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipelines.spec import load_spec
    from pipelines.train import TrainSpec, run

    spec = load_spec(TrainSpec, args.spec, args.overrides)
    summary = run(spec)
    metrics = summary["metrics"] or {}
    loss = metrics.get("loss")
    print(
        f"train {spec.name}: {metrics.get('step', '?')} steps, last loss "
        f"{loss if loss is None else f'{loss:.4f}'}; model in {summary['model']}"
    )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipelines.serve import ServeSpec, run
    from pipelines.spec import load_spec

    spec = load_spec(ServeSpec, args.spec, args.overrides)
    print(f"serving {spec.model.path} as {spec.served_model_id!r}; Ctrl-C stops", flush=True)
    run(spec, blocking=True)
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from pipelines.infer import InferFailed, InferSpec, run
    from pipelines.spec import load_spec

    spec = load_spec(InferSpec, args.spec, args.overrides)
    try:
        summary = run(spec)
    except InferFailed as err:
        print(f"stf infer: FAILED: {err}", file=sys.stderr)
        return EXIT_FAILED
    reasons = ", ".join(f"{r} {n}" for r, n in summary["errors_by_reason"].items()) or "none"
    print(
        f"infer {spec.output}: {summary['rows']} rows, {summary['answered']} answered, "
        f"{summary['errors']} error rows ({reasons}), {summary['resumed_rows']} from an earlier "
        f"run [{summary['seconds']:.1f} s]"
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pipelines.evaluate import EvalSpec, run, summary_line
    from pipelines.infer import InferFailed
    from pipelines.spec import load_spec

    spec = load_spec(EvalSpec, args.spec, args.overrides)
    try:
        report = run(spec)
    except InferFailed as err:
        print(f"stf eval: FAILED: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(summary_line(report))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from pipelines import submit
    from pipelines.spec import load_spec

    job = args.job or submit.detect_job(args.spec, args.overrides)
    spec = load_spec(spec_class(job), args.spec, args.overrides)
    submission_id = submit.submit(job, spec, args.address, args.submission_id)
    print(f"submitted stf {job} as {submission_id}", flush=True)
    if not args.wait:
        return 0
    status = submit.follow(args.address, submission_id)
    print(f"job {submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else EXIT_FAILED


def _cmd_jobs(args: argparse.Namespace) -> int:
    from pipelines import submit

    if args.action == "list":
        for row in submit.list_jobs(args.address):
            print(f"{row['submission_id']:<28}{row['status']:<11}{row['entrypoint']}")
        return 0
    if not args.submission_id:
        raise ValueError(f"stf jobs {args.action} needs a submission id")
    client = submit.client(args.address)
    if args.action == "status":
        info = client.get_job_info(args.submission_id)
        print(
            f"{args.submission_id}: {info.status.value}"
            + (f" ({info.message})" if info.message else "")
        )
    elif args.action == "logs":
        if args.follow:
            submit.follow(args.address, args.submission_id)
        else:
            print(client.get_job_logs(args.submission_id), end="")
    elif args.action == "stop":
        stopped = client.stop_job(args.submission_id)
        print(f"{args.submission_id}: {'stop requested' if stopped else 'already finished'}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from pipelines.synth import write_corpus

    width, _, height = args.image_size.partition("x")
    meta = write_corpus(
        args.out,
        n=args.n,
        seed=args.seed,
        width=int(width),
        height=int(height or width),
        n_eval=args.n_eval,
    )
    r, b = meta["records"], meta["baselines"]
    print(
        f"synth {args.out}: {r['pretrain']} captions (pretrain.json), {r['finetune']} "
        f"conversations (finetune.jsonl), {r['eval']} eval questions (eval.jsonl); "
        f"eval baselines: chance {b['chance']:.1%}, majority answer {b['majority']:.1%}"
    )
    return 0


def _cmd_spec(args: argparse.Namespace) -> int:
    from pipelines.spec import spec_reference

    cls = spec_class(args.job)
    print(f"# stf {args.job}: {cls.__doc__.strip().splitlines()[0]}")
    print(spec_reference(cls))
    return 0


def _image_size(text: str) -> str:
    width, _, height = text.partition("x")
    if not width.isdigit() or (height and not height.isdigit()):
        raise argparse.ArgumentTypeError(f"--image-size takes WIDTHxHEIGHT, got {text!r}")
    return text


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

    preprocess = verbs.add_parser(
        "preprocess", help="LLaVA JSON/JSONL + images -> tokenised Parquet shards (Ray Data)"
    )
    _add_spec_args(preprocess)
    preprocess.set_defaults(func=_cmd_preprocess)

    train = verbs.add_parser(
        "train", help="train one stage with Ray Train + DeepSpeed ZeRO-1/2 (resumes by name)"
    )
    _add_spec_args(train)
    train.set_defaults(func=_cmd_train)

    serve = verbs.add_parser(
        "serve", help="serve a model directory with an OpenAI-compatible API (Ray Serve)"
    )
    _add_spec_args(serve)
    serve.set_defaults(func=_cmd_serve)

    infer = verbs.add_parser(
        "infer", help="batch generation over images or tables -> Parquet (Ray Data, resumable)"
    )
    _add_spec_args(infer)
    infer.set_defaults(func=_cmd_infer)

    evaluate = verbs.add_parser(
        "eval", help="accuracy on a question file with answers (batch inference + scoring)"
    )
    _add_spec_args(evaluate)
    evaluate.set_defaults(func=_cmd_eval)

    submit = verbs.add_parser(
        "submit", help="run a job spec on a Ray cluster (Ray Jobs API; ships this project)"
    )
    _add_spec_args(submit)
    submit.add_argument("--job", choices=sorted(SPECS), help="the job (default: from the spec)")
    submit.add_argument("--address", help="Ray dashboard URL, http://HEAD:8265 (or RAY_ADDRESS)")
    submit.add_argument("--submission-id", help="a submission id of your own")
    submit.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream the logs and exit with the job's status (default), or return at once",
    )
    submit.set_defaults(func=_cmd_submit)

    jobs = verbs.add_parser("jobs", help="list, inspect, follow or stop submitted jobs")
    jobs.add_argument("action", choices=["list", "status", "logs", "stop"])
    jobs.add_argument("submission_id", nargs="?")
    jobs.add_argument("--address", help="Ray dashboard URL, http://HEAD:8265 (or RAY_ADDRESS)")
    jobs.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jobs.set_defaults(func=_cmd_jobs)

    synth = verbs.add_parser("synth", help="write the synthetic shapes corpus (demo, tests)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--n", type=int, default=1000, help="training images (default 1000)")
    synth.add_argument("--n-eval", type=int, help="held-out questions (default n/5, at least 20)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--image-size", type=_image_size, default="96x72", help="WIDTHxHEIGHT")
    synth.set_defaults(func=_cmd_synth)

    spec = verbs.add_parser("spec", help="print a job's spec reference (keys, defaults, meaning)")
    spec.add_argument("job", choices=sorted(SPECS))
    spec.set_defaults(func=_cmd_spec)
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
