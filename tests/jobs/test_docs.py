"""The README's spec references are generated from the pydantic models and must be current."""

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
    from pipelines.cli import SPECS

    text = (ROOT / "README.md").read_text()
    for job in SPECS:
        assert f"<!-- spec-reference: {job} -->" in text, job
