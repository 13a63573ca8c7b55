"""The ``stf`` command line.

Every job is one row of :data:`~pipelines.jobs.JOBS`: its spec class, the module that runs it
(``run(spec)`` and ``summary_line(spec, result)``) and its help line. A job verb loads the spec
(YAML + ``--set``), runs it and prints the one-line summary; ``submit``, ``jobs`` and ``spec``
work on those same rows.

Only user errors (:class:`~pipelines.errors.UserError` and the model library's
:class:`~stf_model.errors.ModelInputError`) become a one-line message, exit code 2 (1 for a job
that ran and failed); any other exception is a bug and keeps its traceback. ``-v`` shows the
traceback of user errors too.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from typing import Any

from pipelines.errors import JobFailed, UserError
from pipelines.jobs import JOBS, run_job, spec_class

EXIT_USAGE = 2
EXIT_FAILED = 1


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


def _add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", help="Ray dashboard URL, http://HEAD:8265 (or RAY_ADDRESS)")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="file holding the cluster's Ray token (default: RAY_AUTH_TOKEN, the file in "
        "RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token)",
    )


def _cmd_job(args: argparse.Namespace) -> int:
    from pipelines.spec import load_spec

    spec = load_spec(spec_class(args.verb), args.spec, args.overrides)
    _, line = run_job(args.verb, spec)
    print(line)
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from pipelines import submit
    from pipelines.spec import load_spec

    job = args.job or submit.detect_job(args.spec, args.overrides)
    spec = load_spec(spec_class(job), args.spec, args.overrides)
    cluster = submit.Cluster.connect(args.address, args.token_file)
    with cluster.refusals_explained():
        submission_id = submit.submit(cluster, job, spec, args.submission_id)
        print(f"submitted stf {job} as {submission_id}", flush=True)
        if not args.wait:
            return 0
        status = submit.follow(cluster, submission_id)
    print(f"job {submission_id}: {status}")
    return 0 if status == "SUCCEEDED" else EXIT_FAILED


def _cmd_jobs(args: argparse.Namespace) -> int:
    from pipelines import submit

    if args.action != "list" and not args.submission_id:
        raise UserError(f"stf jobs {args.action} needs a submission id")
    cluster = submit.Cluster.connect(args.address, args.token_file)
    with cluster.refusals_explained():
        _jobs_action(submit, cluster, args)
    return 0


def _jobs_action(submit: Any, cluster: Any, args: argparse.Namespace) -> None:
    jobs = cluster.jobs
    if args.action == "list":
        for row in submit.list_jobs(cluster):
            print(f"{row['submission_id']:<28}{row['status']:<11}{row['entrypoint']}")
    elif args.action == "status":
        info = jobs.get_job_info(args.submission_id)
        message = f" ({info.message})" if info.message else ""
        print(f"{args.submission_id}: {info.status.value}{message}")
    elif args.action == "logs" and args.follow:
        submit.follow(cluster, args.submission_id)
    elif args.action == "logs":
        print(jobs.get_job_logs(args.submission_id), end="")
    elif args.action == "stop":
        stopped = jobs.stop_job(args.submission_id)
        print(f"{args.submission_id}: {'stop requested' if stopped else 'already finished'}")


def _cmd_spec(args: argparse.Namespace) -> int:
    from pipelines.spec import spec_reference

    cls = spec_class(args.job)
    print(f"# stf {args.job}: {cls.__doc__.strip().splitlines()[0]}")
    print(spec_reference(cls))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stf", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; tracebacks for user errors"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    for name, job in JOBS.items():
        verb = verbs.add_parser(name, help=job.help, description=job.help)
        _add_spec_args(verb)
        verb.set_defaults(func=_cmd_job)

    submit = verbs.add_parser(
        "submit", help="run a job spec on a Ray cluster (Ray Jobs API; ships this project)"
    )
    _add_spec_args(submit)
    submit.add_argument("--job", choices=sorted(JOBS), help="the job (default: from the spec)")
    _add_cluster_args(submit)
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
    _add_cluster_args(jobs)
    jobs.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    jobs.set_defaults(func=_cmd_jobs)

    spec = verbs.add_parser("spec", help="print a job's spec reference (keys, defaults, meaning)")
    spec.add_argument("job", choices=sorted(JOBS))
    spec.set_defaults(func=_cmd_spec)
    return parser


def is_user_error(err: BaseException) -> bool:
    """Our user errors and the model library's. The library's type is looked up only if the
    library was imported: an error from code that never ran cannot be one of its errors."""
    if isinstance(err, UserError):
        return True
    library = sys.modules.get("stf_model.errors")
    return library is not None and isinstance(err, library.ModelInputError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except Exception as err:
        if not is_user_error(err):
            raise  # a bug: the traceback is what a maintainer needs
        if args.verbose:
            traceback.print_exc()
        failed = isinstance(err, JobFailed)
        print(f"stf {args.verb}: {'FAILED' if failed else 'error'}: {err}", file=sys.stderr)
        return EXIT_FAILED if failed else EXIT_USAGE
    finally:
        ray_env = sys.modules.get("pipelines.ray_env")  # imported only by commands that use Ray
        if ray_env is not None:
            ray_env.stop_local_ray()


if __name__ == "__main__":
    sys.exit(main())
