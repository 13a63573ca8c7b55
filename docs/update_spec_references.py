"""Regenerates the spec references in the job pages (``docs/jobs/*.md``) from the pydantic models,
so they cannot drift.

Each job's page holds a block between ``<!-- spec-reference: JOB -->`` and
``<!-- /spec-reference -->``; this fills it with ``stf spec JOB``'s output.

    python docs/update_spec_references.py          # rewrite the pages
    python docs/update_spec_references.py --check  # exit 1 if one is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PAGES = sorted((Path(__file__).resolve().parent / "jobs").glob("*.md"))
BLOCK = re.compile(r"(<!-- spec-reference: ([\w-]+) -->\n)(.*?)(<!-- /spec-reference -->)", re.S)


def render(text: str) -> str:
    from pipelines.jobs import spec_class
    from pipelines.spec import spec_reference

    def fill(match: re.Match) -> str:
        job = match.group(2)
        cls = spec_class(job)
        body = f"<details><summary>All keys of <code>stf {job}</code>'s spec (`stf spec {job}`)</summary>\n\n"
        body += f"```yaml\n{spec_reference(cls)}\n```\n\n</details>\n"
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(fill, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    stale = []
    for page in PAGES:
        text = page.read_text()
        new = render(text)
        if new != text:
            stale.append(page.name)
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(
            f"stale spec references in docs/jobs/ {stale}: run python docs/update_spec_references.py"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
