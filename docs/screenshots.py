"""Re-takes the docs' pictures after ``make demo``: the chat page of the demo's model (served
as ``make serve`` serves it, on a free port) answering two questions about a held-out image, and the
demo's ``report.html``. Both in headless Chromium, as the browser tests drive it.

    .venv/bin/python docs/screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The one place that knows how to find (or install) and start Chromium for this project.
sys.path.insert(0, str(ROOT / "tests"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs"))
    out = Path(parser.parse_args().out)
    import ray
    from ray import serve
    from support.browser import ask_on_page, open_chromium, wait_for_chromium

    from pipelines.ray_env import start_local_ray
    from pipelines.serve.job import run
    from pipelines.serve.spec import ServeSpec
    from pipelines.spec import load_spec

    found = wait_for_chromium()
    if isinstance(found, str):
        sys.exit(found)
    corpus = ROOT / "demo_out" / "corpus"
    first = json.loads((corpus / "eval.jsonl").read_text().splitlines()[1])
    spec = load_spec(
        ServeSpec, str(ROOT / "examples" / "serve-local.yaml"), [f"port={_free_port()}"]
    )
    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    browser = open_chromium(*found, downloads=str(out))
    try:
        browser.set_window_size(1000, 720)
        browser.get(run(spec, blocking=False) + "/")
        ask_on_page(browser, first["text"].splitlines()[0], corpus / first["image"])
        ask_on_page(browser, "What shape is at the top left?")
        browser.save_screenshot(str(out / "chat_page.png"))
        browser.set_window_size(1100, 900)
        browser.get((ROOT / "demo_out" / "eval" / "report.html").as_uri())
        browser.save_screenshot(str(out / "eval_report.png"))
    finally:
        browser.quit()
        serve.shutdown()
        ray.shutdown()
    print(f"wrote {out / 'chat_page.png'} and {out / 'eval_report.png'}")


if __name__ == "__main__":
    main()
