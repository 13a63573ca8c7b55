"""What to open after ``make demo``: the evaluation page it wrote and the chat page of the server
``make serve`` starts, both read from the demo's own specs (so they stay right when those change).

    python examples/demo_next.py [EVAL_SPEC] [SERVE_SPEC]
"""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.eval.spec import EvalSpec
from pipelines.serve.spec import ServeSpec
from pipelines.spec import load_spec


def next_steps(eval_spec: str, serve_spec: str) -> list[str]:
    report = load_spec(EvalSpec, eval_spec).output.rstrip("/") + "/report.html"
    if "://" not in report:
        report = str(Path(report).resolve())
    serve = load_spec(ServeSpec, serve_spec)
    return [
        f"demo: the evaluation report is {report} (open it in a browser)",
        f"demo: to chat with the model, run `make serve` (.venv/bin/stf serve {serve_spec}) "
        f"and open {serve.url}/",
    ]


if __name__ == "__main__":
    args = sys.argv[1:] or ["examples/eval-demo.yaml", "examples/serve-local.yaml"]
    print("\n".join(next_steps(*args)))
