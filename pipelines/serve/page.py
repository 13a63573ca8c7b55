"""The chat page ``stf serve`` answers at its route prefix: ``ui/index.html`` with ``ui/chat.css``
and ``ui/chat.js`` put inline, so that it is one response whatever the prefix (the script finds the
API next to the page) and needs nothing from any other host.

The page is sent with a Content-Security-Policy that allows exactly its own style and script (by
their SHA-256), images from ``data:``/``blob:`` URLs and requests to this server only: a page that
shows model output and holds an API key must not be able to load or send anything elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class Page:
    html: str
    headers: dict[str, str]


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def chat_page() -> Page:
    """The assembled page and the headers it is sent with."""
    folder = resources.files("pipelines.serve") / "ui"
    css = (folder / "chat.css").read_text(encoding="utf-8")
    script = (folder / "chat.js").read_text(encoding="utf-8")
    html = (folder / "index.html").read_text(encoding="utf-8")
    html = html.replace("/*chat.css*/", css).replace("/*chat.js*/", script)
    policy = "; ".join(
        [
            "default-src 'none'",
            f"script-src {_sha256(script)}",
            f"style-src {_sha256(css)}",
            "img-src data: blob:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )
    headers = {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
    return Page(html, headers)
