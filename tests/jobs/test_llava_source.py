"""Streaming LLaVA record files: JSON lists and JSONL, positions, and broken files."""

import io
import json

import pytest

import pipelines.preprocess.source as source
from pipelines.spec import StorageOptions


def records(path):
    return list(source.iter_raw_records(str(path), StorageOptions()))


@pytest.fixture(params=[1 << 20, 7])  # a tiny chunk makes every record span reads
def chunk(request, monkeypatch):
    monkeypatch.setattr(source, "_CHUNK", request.param)


def test_json_list_streams_every_element_with_its_line(tmp_path, chunk):
    items = [
        {"id": i, "conversations": [{"from": "human", "value": "a,]\n" * i}]} for i in range(5)
    ]
    path = tmp_path / "list.json"
    path.write_text(json.dumps(items, indent=1))
    rows = records(path)
    assert [json.loads(r["raw"]) for r in rows] == items
    assert [r["index"] for r in rows] == list(range(5))
    lines = path.read_text().splitlines()
    for row in rows:
        assert lines[row["line"] - 1].strip() == "{"


def test_jsonl_positions_skip_blank_lines(tmp_path, chunk):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": 1}\n\n{bad json\n{"id": 3}')  # no final newline
    rows = records(path)
    assert [(r["index"], r["line"], r["raw"]) for r in rows] == [
        (0, 1, '{"id": 1}'),
        (1, 3, "{bad json"),
        (2, 4, '{"id": 3}'),
    ]


@pytest.mark.parametrize(
    "text,why",
    [
        ('[{"id": 1}, {"id": 2', "line 1"),
        ('[{"id": 1} {"id": 2}]', "missing ','"),
        ('[{"id": 1},\n', "not closed"),
        ('[\n{"id": 1},\n\n{"id": 3,}\n]', "at line 4"),  # the element's own line
    ],
)
def test_a_broken_json_list_ends_with_one_error_row(tmp_path, chunk, text, why):
    path = tmp_path / "broken.json"
    path.write_text(text)
    rows = records(path)
    assert json.loads(rows[0]["raw"]) == {"id": 1}
    assert rows[-1]["raw"] is None and why in rows[-1]["error"]
    assert len(rows) == 2


@pytest.mark.parametrize("name", ["list.json", "list.txt"])
def test_a_byte_order_mark_is_skipped_in_a_json_list(tmp_path, chunk, name):
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"id": 1}, {"id": 2}]).encode())
    assert [json.loads(r["raw"]) for r in records(path)] == [{"id": 1}, {"id": 2}]


def test_a_byte_order_mark_is_skipped_in_jsonl(tmp_path, chunk):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"id": 1}\n{"id": 2}\n')
    assert [json.loads(r["raw"]) for r in records(path)] == [{"id": 1}, {"id": 2}]


def test_a_jsonl_file_is_read_by_line_even_when_its_first_line_is_an_array(tmp_path, chunk):
    path = tmp_path / "a.jsonl"
    path.write_text('[{"id": 0}]\n{"id": 1}\n{"id": 2}\n')
    rows = records(path)
    assert [(r["index"], r["line"], r["raw"]) for r in rows] == [
        (0, 1, '[{"id": 0}]'),
        (1, 2, '{"id": 1}'),
        (2, 3, '{"id": 2}'),
    ]


@pytest.mark.parametrize("name", ["records.json", "records.txt"])
def test_text_after_a_json_list_is_an_error_row_not_lost(tmp_path, chunk, name):
    path = tmp_path / name
    path.write_text('[{"id": 0}]\n\n{"id": 1}\n{"id": 2}\n')
    rows = records(path)
    assert json.loads(rows[0]["raw"]) == [{"id": 0}][0] and len(rows) == 2
    assert rows[1]["raw"] is None and "follows the list" in rows[1]["error"]
    assert rows[1]["line"] == 3


def test_blank_text_after_a_json_list_is_fine(tmp_path, chunk):
    path = tmp_path / "list.json"
    path.write_text('[{"id": 0}]\n\n  \n')
    assert [json.loads(r["raw"]) for r in records(path)] == [{"id": 0}]


def test_a_list_broken_early_is_not_read_to_its_end(monkeypatch):
    """Reading on only mends an element the buffer cut off; a broken one stays broken, and
    reading the rest of a 1 GB list into memory to find that out took minutes."""
    monkeypatch.setattr(source, "_CHUNK", 1000)

    class Counting(io.StringIO):
        chars = 0

        def read(self, size=-1):
            out = super().read(size)
            Counting.chars += len(out)
            return out

    rest = ",\n".join(json.dumps({"id": i, "pad": "x" * 100}) for i in range(20_000))
    text = Counting('[\n{"id": 0},\n{"id": 1,}\n,' + rest + "\n]")  # 2.4 MB
    rows = list(source._json_list("mem.json", text, text.read(1000)))
    assert len(rows) == 2 and "at line 3" in rows[1]["error"]
    assert Counting.chars < 10_000


@pytest.mark.parametrize("name", ["a.jsonl", "list.json"])
def test_bytes_that_are_not_utf8_make_an_error_row_and_reading_goes_on(tmp_path, chunk, name):
    path = tmp_path / name
    good = [b'{"id": 1}', b'{"id": "caf\xe9"}', b'{"id": 3}']
    path.write_bytes(b"\n".join(good) if name.endswith("jsonl") else b"[" + b",".join(good) + b"]")
    rows = records(path)
    assert [r["raw"] for r in rows] == ['{"id": 1}', None, '{"id": 3}']
    assert rows[1]["reason"] == "malformed_json" and "byte 0xE9" in rows[1]["error"]


def test_a_byte_order_mark_at_the_start_of_a_jsonl_line_is_skipped(tmp_path, chunk):
    path = tmp_path / "joined.jsonl"  # two files with BOMs, joined with cat
    path.write_bytes(b'\xef\xbb\xbf{"id": 1}\n\xef\xbb\xbf{"id": 2}\n')
    assert [json.loads(r["raw"]) for r in records(path)] == [{"id": 1}, {"id": 2}]
