"""What the README, the job pages and `make demo` tell a user: the spec references are generated
from the pydantic models and must be current; the README stays a five-minute read that links
every job's page; the demo ends by saying what to open next."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_spec_references_are_current():
    done = subprocess.run(
        [sys.executable, "docs/update_spec_references.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_job_has_a_page_with_its_reference_and_the_readme_links_it():
    from pipelines.jobs import JOBS

    readme = (ROOT / "README.md").read_text()
    pages = "".join(p.read_text() for p in (ROOT / "docs" / "jobs").glob("*.md"))
    for job in JOBS:
        assert f"<!-- spec-reference: {job} -->" in pages, job
        page = "eval" if job == "eval-suite" else job
        assert f"(docs/jobs/{page}.md)" in readme, job


def test_the_readmes_minimal_specs_are_valid_specs():
    """Each YAML block in a job's section of the README validates as that job's spec."""
    import yaml

    from pipelines.jobs import spec_class

    readme = (ROOT / "README.md").read_text()
    checked = []
    for section in readme.split("\n### ")[1:]:
        job = re.search(r"`stf ([\w-]+)`", section.splitlines()[0]).group(1)
        for block in re.findall(r"```yaml\n(.*?)```", section, re.S):
            spec_class(job).model_validate(yaml.safe_load(block))
            checked.append(job)
    assert set(checked) == {"init", "preprocess", "train", "serve", "infer", "eval"}


def test_the_readme_is_short_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 300
    for markdown in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", markdown.read_text()):
            assert (markdown.parent / target).exists(), f"{markdown.relative_to(ROOT)}: {target}"


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


def test_every_reason_code_is_raised_somewhere_and_listed_for_users():
    """The codes of quarantine and error rows: each code the code raises is in the table of the
    class it is raised with (a typo would otherwise surface as a KeyError only when such a record
    turns up), each code in the tables is produced somewhere (none is dead), and the preprocess
    page lists every one with the table's explanation one import away."""
    import ast

    from pipelines.reasons import REASONS
    from stf_model.records import REASONS as LIBRARY_REASONS

    used: set[str] = set()
    raised: dict[str, set[str]] = {"RecordError": set(), "RejectedRecord": set()}
    for path in [*ROOT.glob("stf_model/**/*.py"), *ROOT.glob("pipelines/**/*.py")]:
        tree = ast.parse(path.read_text())
        table_keys = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys}
        for node in ast.walk(tree):
            is_text = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_text and id(node) not in table_keys:
                used.add(node.value)
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in raised
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                raised[node.func.id].add(node.args[0].value)
    assert raised["RecordError"] and raised["RecordError"] <= set(LIBRARY_REASONS)
    assert raised["RejectedRecord"] and raised["RejectedRecord"] <= set(REASONS)
    assert set(REASONS) <= used, set(REASONS) - used
    page = (ROOT / "docs" / "jobs" / "preprocess.md").read_text()
    assert all(f"`{code}`" in page for code in REASONS), [
        c for c in REASONS if f"`{c}`" not in page
    ]
