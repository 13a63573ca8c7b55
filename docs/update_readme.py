"""Regenerates the spec references in README.md from the pydantic models, so they cannot drift.

Each job section holds a block between ``<!-- spec-reference: JOB -->`` and
``<!-- /spec-reference -->``; this fills it with ``stf spec JOB``'s output.

    python docs/update_readme.py          # rewrite README.md
    python docs/update_readme.py --check  # exit 1 if README.md is out of date (the tests run this)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
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
    text = README.read_text()
    new = render(text)
    if args.check:
        if new != text:
            print("README.md spec references are stale: run python docs/update_readme.py")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
