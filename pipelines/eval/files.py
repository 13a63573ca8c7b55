"""Reading a benchmark's published files (local or ``s3://``) with errors that name the file and
the problem: JSON, JSONL (LLaVA's question and answers files, POPE's labels), TSV (MMBench) and
folders (MME). A file given as a folder is looked up by its published name inside it."""

from __future__ import annotations

import csv
import io
import posixpath
from collections.abc import Iterator
from typing import Any, BinaryIO

from pipelines import strict_json
from pipelines.errors import InputError, MissingInput
from pipelines.spec import StorageOptions
from pipelines.storage import filesystem, fs_path, join, to_url

# MMBench's TSVs hold each image as base64 in a cell: far over csv's 128 KiB default.
csv.field_size_limit(2**31 - 1)


class Files:
    """The locations an eval spec names, read through its storage options."""

    def __init__(self, annotations: list[str], storage: StorageOptions):
        self.annotations = annotations
        self.storage = storage

    def read_bytes(self, url: str, what: str) -> bytes:
        with self._open(url, what) as f:
            return f.read()

    def _open(self, url: str, what: str) -> BinaryIO:
        try:
            return filesystem(url, self.storage).open(fs_path(url), "rb")
        except FileNotFoundError:
            raise MissingInput(f"{what} {url!r} does not exist") from None
        except IsADirectoryError:
            raise InputError(f"{what} {url!r} is a folder; name the file") from None

    def json(self, url: str, what: str) -> Any:
        try:
            return strict_json.loads(self.read_bytes(url, what))
        except strict_json.NotJSON as err:
            raise InputError(f"{what} {url!r} is not JSON ({err})") from None

    def jsonl(self, url: str, what: str) -> Iterator[dict[str, Any]]:
        """The objects of a JSON-lines file, one per non-blank line, parsed as the file is read
        (the file is never held whole)."""
        with self._open(url, what) as file:
            yield from strict_json.objects_per_line(file, f"{what} {url!r}")

    def tsv(self, url: str, what: str) -> list[dict[str, str]]:
        """The rows of a tab-separated file with a header line (cells as strings, "" if empty)."""
        text = self.read_bytes(url, what).decode("utf-8-sig")
        reader = csv.DictReader(io.StringIO(text), delimiter="\t")
        rows = [{k: v or "" for k, v in row.items() if k is not None} for row in reader]
        if not rows:
            raise InputError(f"{what} {url!r} has no rows")
        return rows

    def is_dir(self, url: str) -> bool:
        return filesystem(url, self.storage).isdir(fs_path(url))

    def listdir(self, url: str) -> list[str]:
        """The names directly inside a folder."""
        fs = filesystem(url, self.storage)
        fs.invalidate_cache()
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(fs_path(url), detail=False))

    def single(self, benchmark: str, published: str) -> str:
        """The one annotations file a benchmark takes (its published name: ``published``)."""
        files = [a for a in self.annotations if not self.is_dir(a)]
        if len(self.annotations) == 1 and files:
            return files[0]
        if len(self.annotations) == 1:
            return self.annotation(published, benchmark)
        raise InputError(
            f"{benchmark}: annotations takes one file ({published}); given "
            f"{len(self.annotations)}: {', '.join(self.annotations) or 'none'}"
        )

    def annotation(self, name: str, benchmark: str) -> str:
        """The ``annotations`` location named ``name``: a file of that name, or the file inside
        one of the given folders."""
        for location in self.annotations:
            if posixpath.basename(location.rstrip("/")) == name:
                return location
        for location in self.annotations:
            if self.is_dir(location):
                inside = join(location, name)
                if filesystem(inside, self.storage).isfile(fs_path(inside)):
                    return to_url(location, fs_path(inside))
        given = ", ".join(self.annotations) or "none"
        raise MissingInput(
            f"{benchmark}: annotations must include {name} (a file of that name, or a folder "
            f"holding it); given: {given}"
        )
