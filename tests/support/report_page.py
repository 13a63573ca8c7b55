"""Reading ``report.html`` as a test would read it from disk: its numbers, rows and images."""

from __future__ import annotations

from html.parser import HTMLParser


class _Page(HTMLParser):
    """What a reader of report.html sees: the numbers (data-value cells), the example rows in
    order with their class, the images and any script."""

    def __init__(self):
        super().__init__()
        self.values: dict[tuple[str, str], float] = {}
        self.rows: list[str] = []
        self.images: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "data-value" in attrs:
            self.values[(attrs["class"], attrs["data-type"])] = float(attrs["data-value"])
        if tag == "tr" and attrs.get("class") in ("right", "wrong"):
            self.rows.append(attrs["class"])
        if tag == "img":
            self.images.append(attrs["src"])
        self.scripts += tag == "script"

    def handle_data(self, data):
        self.text.append(data)


def read_page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page
