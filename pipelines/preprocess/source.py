"""A Ray Data datasource over LLaVA record files (a JSON list or JSONL, local or S3).

Ray's ``read_json`` parses whole files with Arrow, which fails a file on one bad line and coerces
LLaVA's irregular records into one schema; we need one row per record *with its position*, and a
bad line must become a quarantined record rather than a failed job. So each read task streams one
file and emits raw record text; parsing and validation happen in the preprocessing map.

Each file ends with one count row (``file_records`` set, ``raw`` null): how many records the reader
saw. It travels through the pipeline with the records, so the sink can check, per file, that
every record read was written or quarantined.
"""

from __future__ import annotations

import functools
import io
import json
import re
from collections.abc import Iterator

import pyarrow as pa
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from pipelines.spec import StorageOptions
from pipelines.storage import filesystem, fs_path

RAW_SCHEMA = pa.schema(
    [
        ("source", pa.string()),  # file URL
        ("index", pa.int64()),  # 0-based record position in the file (null on the count row)
        ("line", pa.int64()),  # 1-based line where the record starts (null on the count row)
        ("raw", pa.string()),  # the record's JSON text; null on a count row
        ("error", pa.string()),  # set when the reader itself could not read a record
        ("reason", pa.string()),  # and then its quarantine reason
        ("file_records", pa.int64()),  # set only on the file's final count row
    ]
)
_CHUNK = 1 << 20


class LlavaRecordsDatasource(Datasource):
    """One read task per file; each yields blocks of ``rows_per_block`` raw records."""

    def __init__(
        self, files: list[tuple[str, int]], storage: StorageOptions, rows_per_block: int = 512
    ):
        super().__init__()
        self._files = files
        self._storage = storage
        self._rows_per_block = rows_per_block

    def estimate_inmemory_data_size(self) -> int | None:
        return sum(size for _, size in self._files)

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None):
        tasks = []
        for url, size in self._files:
            meta = BlockMetadata(num_rows=None, size_bytes=size, exec_stats=None, input_files=[url])
            read = functools.partial(_blocks, url, self._storage, self._rows_per_block)
            tasks.append(ReadTask(read, meta))
        return tasks


def _blocks(url: str, storage: StorageOptions, rows_per_block: int) -> Iterator[pa.Table]:
    batch: list[dict] = []
    count = 0
    for row in iter_raw_records(url, storage):
        batch.append(row)
        count += 1
        if len(batch) >= rows_per_block:
            yield pa.Table.from_pylist(batch, schema=RAW_SCHEMA)
            batch = []
    batch.append({"source": url, "file_records": count})  # the count row: no index, no line
    yield pa.Table.from_pylist(batch, schema=RAW_SCHEMA)


JSONL_SUFFIXES = (".jsonl", ".ndjson")


def iter_raw_records(url: str, storage: StorageOptions) -> Iterator[dict]:
    """Rows ``{source, index, line, raw, error}`` for each record of a JSON-list or JSONL file.

    A ``.jsonl``/``.ndjson`` file is JSONL whatever its first line holds (a line that is a JSON
    array is one bad record, not a list file); any other file is a JSON list when its first
    non-blank character is ``[``. A UTF-8 byte-order mark is skipped (``utf-8-sig``), also at the
    start of a JSONL line (files joined with ``cat``). A record with bytes that are not UTF-8 is
    an error row, not text with replacement characters in it."""
    fs = filesystem(url, storage)
    with fs.open(fs_path(url), "rb") as binary:
        # surrogateescape: a bad byte becomes a lone surrogate that _record finds, where
        # errors="replace" would let the record through with U+FFFD in place of its text.
        text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="")
        head = text.read(_CHUNK)
        jsonl = url.lower().endswith(JSONL_SUFFIXES) or not head.lstrip().startswith("[")
        yield from _jsonl(url, text, head) if jsonl else _json_list(url, text, head)


def _jsonl(url: str, text: io.TextIOBase, head: str) -> Iterator[dict]:
    index = 0
    for line_no, line in enumerate(_lines(text, head), start=1):
        if line.strip():
            yield _record(url, index, line_no, line.removeprefix("\ufeff"))
            index += 1


NEWLINE = "\n"
_NOT_UTF8 = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a byte that is not UTF-8


def _record(url: str, index: int, line: int, raw: str) -> dict:
    bad = _NOT_UTF8.search(raw)
    if bad is None:
        return {"source": url, "index": index, "line": line, "raw": raw}
    at = bad.start()
    byte, column = ord(bad.group()) - 0xDC00, at - raw.rfind("\n", 0, at)
    where = f"line {line + raw.count(NEWLINE, 0, at)} column {column}"
    return {
        "source": url,
        "index": index,
        "line": line,
        "raw": None,
        "error": f"not UTF-8 text (byte 0x{byte:02X} at {where}); JSON must be UTF-8",
        "reason": "malformed_json",
    }


def _lines(text: io.TextIOBase, head: str) -> Iterator[str]:
    pending = head
    while True:
        *complete, pending = pending.split("\n")
        yield from complete
        chunk = text.read(_CHUNK)
        if not chunk:
            break
        pending += chunk
    if pending:
        yield pending


def _json_list(url: str, text: io.TextIOBase, buf: str) -> Iterator[dict]:
    """Streams the elements of a top-level JSON list. The standard library has no incremental
    parser, so this walks the list with ``JSONDecoder.raw_decode``, reading more text whenever an
    element runs past the buffer; memory stays at about one chunk plus one record."""
    decoder = json.JSONDecoder()
    pos = buf.index("[") + 1
    line = 1 + buf.count("\n", 0, pos)
    index, eof, expect_element = 0, False, True
    while True:
        # Skip whitespace and the separating comma; top up the buffer when it runs dry.
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                line += buf[pos] == "\n"
                if buf[pos] == ",":
                    expect_element = True
                pos += 1
            if pos < len(buf) or eof:
                break
            buf, pos = buf[pos:] + text.read(_CHUNK), 0
            eof = pos == len(buf)
        if pos >= len(buf):
            yield _unreadable(url, index, line, "the list is not closed with ']'")
            return
        if buf[pos] == "]":
            yield from _after_list(url, text, buf[pos + 1 :], index, line)
            return
        try:
            _, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as err:
            chunk = "" if eof or not _may_continue(err, len(buf)) else text.read(_CHUNK)
            if chunk:  # the element may just continue past the buffer
                buf, pos = buf[pos:] + chunk, 0
                continue
            at = f"line {line + buf.count(NEWLINE, pos, err.pos)}"
            yield _unreadable(url, index, line, f"{err.msg} at {at}")
            return
        if not expect_element:
            yield _unreadable(url, index, line, "missing ',' between list elements")
            return
        raw = buf[pos:end]
        yield _record(url, index, line, raw)
        line += raw.count("\n")
        index, pos, expect_element = index + 1, end, False
        if pos > _CHUNK:
            buf, pos = buf[pos:], 0


def _may_continue(err: json.JSONDecodeError, buffered: int) -> bool:
    """Whether an element that failed to parse may only be cut off by the buffer's end: the
    parser stopped at that end, or in a string still open there. Otherwise the element is
    broken where it is, and reading on (the whole rest of the file) would not mend it."""
    return err.pos >= buffered - 6 or err.msg.startswith("Unterminated string")  # 6: "\\uXXXX"


def _after_list(url: str, text: io.TextIOBase, rest: str, index: int, line: int):
    """Text after the list's closing ``]`` must be blank: anything else (more records, say a
    JSONL file whose first line is an array) is one error row, so it is never silently dropped."""
    while True:
        stripped = rest.lstrip()
        if stripped:
            line += rest[: len(rest) - len(stripped)].count("\n")
            yield _unreadable(url, index, line, "text follows the list's closing ']'")
            return
        rest = text.read(_CHUNK)
        if not rest:
            return


def _unreadable(url: str, index: int, line: int, why: str) -> dict:
    return {
        "source": url,
        "index": index,
        "line": line,
        "raw": None,
        "error": f"JSON list broken: {why}; the rest of the file could not be read",
        "reason": "broken_json_list",
    }
