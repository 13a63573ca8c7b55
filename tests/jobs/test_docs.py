"""What the README and `make demo` tell a user: the spec references are generated from the pydantic
models and must be current; the demo ends by saying what to open next."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_spec_references_are_current():
    done = subprocess.run(
        [sys.executable, "docs/update_readme.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_job_has_a_reference_block():
    from pipelines.jobs import JOBS

    text = (ROOT / "README.md").read_text()
    for job in JOBS:
        assert f"<!-- spec-reference: {job} -->" in text, job


def test_make_demo_ends_with_the_report_and_the_chat_page(tmp_path):
    """The demo's last lines: where report.html is and which URL `make serve` answers, both read
    from the specs (a changed port or output folder shows up there)."""
    demo = ROOT.joinpath("Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    assert (
        demo.strip()
        .splitlines()[-1]
        .endswith("examples/demo_next.py examples/eval-demo.yaml examples/serve-local.yaml")
    )
    serve = tmp_path / "serve.yaml"
    serve.write_text("model:\n  path: m\nport: 8123\nroute_prefix: /chat\nhost: 0.0.0.0\n")
    evaluation = tmp_path / "eval.yaml"
    evaluation.write_text(f"model:\n  path: m\nquestions: q.jsonl\noutput: {tmp_path}/ev\n")
    lines = subprocess.run(
        [sys.executable, "examples/demo_next.py", str(evaluation), str(serve)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert lines[0].startswith(f"demo: the evaluation report is {tmp_path}/ev/report.html")
    assert lines[1].endswith("open http://127.0.0.1:8123/chat/")
