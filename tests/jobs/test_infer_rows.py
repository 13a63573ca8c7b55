"""What batch inference reads as its rows, and which output it may add to: no Ray, no model.
Every image a user points at is a row (links included), a table either reads exactly or fails
with the line at fault, and an output holding another spec's answers is refused."""

import json
import os

import pytest
from PIL import Image

from pipelines.errors import InputError, MissingInput
from pipelines.infer import InferSpec
from pipelines.infer.output import claim_output
from pipelines.infer.rows import list_rows


def spec(inputs, output="/tmp/unused-output", **extra) -> InferSpec:
    return InferSpec.model_validate(
        {"model": {"path": "/models/a"}, "inputs": inputs, "output": str(output), **extra}
    )


def ids(rows) -> list[str]:
    return rows.column("id").to_pylist()


def test_a_folder_named_like_a_glob_with_links_lists_every_image(tmp_path):
    folder = tmp_path / "photos [2023]"  # "[" would make it a glob
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "a.JPG")
    Image.new("RGB", (8, 8)).save(folder / "sub" / "b.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (8, 8)).save(elsewhere / "c.jpg")
    os.symlink(folder / "a.JPG", folder / "link.jpg")  # a Hugging Face snapshot is all links
    os.symlink(tmp_path / "gone.jpg", folder / "broken.jpg")  # a row, whose read then fails
    os.symlink(elsewhere, folder / "linked")
    rows = list_rows(spec([str(folder)]))
    assert ids(rows) == ["a.JPG", "broken.jpg", "link.jpg", "linked/c.jpg", "sub/b.png"]


def test_a_jsonl_table_reads_exactly_or_fails_at_its_line(tmp_path):
    table = tmp_path / "rows.jsonl"
    # U+2028 and U+0085 are legal in JSON strings; str.splitlines would cut the line there.
    records = [
        {"id": 1, "image": "a.jpg", "prompt": "one\u2028two\x85"},
        {"id": 2, "image": "b.jpg", "prompt": 0},
    ]
    table.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    rows = list_rows(spec([str(table)])).to_pylist()
    assert [r["prompt"] for r in rows] == ["one\u2028two\x85", "0"]  # 0 is a prompt, not none
    for text, why in (
        ('{"id": 1, "image": "a.jpg"}\n["b", "y.jpg"]', "line 2 is not a JSON object"),
        ('{"id": 1, "image": "a.jpg", "w": NaN}', "line 1 is not JSON"),
        (b'{"id": "caf\xe9", "image": "a.jpg"}', "line 1 is not JSON"),
    ):
        (tmp_path / "bad.jsonl").write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(InputError, match=why):
            list_rows(spec([str(tmp_path / "bad.jsonl")]))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MissingInput, match="no rows"):
        list_rows(spec([str(tmp_path / "empty.jsonl")]))


@pytest.mark.parametrize("template", ["{prompt} {", "{0}", "{}", "{prompt!r}", "{prompt.upper}"])
def test_a_prompt_template_names_columns_only(template):
    with pytest.raises(ValueError, match="prompt_template"):
        spec(["/x"], prompt_template=template)
    assert spec(["/x"], prompt_template="{{literal}} {prompt}").prompt_template


def test_an_output_holding_another_specs_answers_is_refused(tmp_path):
    first = spec(["/data/images"], tmp_path / "out")
    claim_output(first, holds_answers=False)
    claim_output(first.model_copy(update={"limit": 3, "batch_size": 2}), holds_answers=True)
    other_model = first.model_copy(update={"model": first.model.model_copy(update={"path": "/b"})})
    for changed in (other_model, first.model_copy(update={"prompt": "Count the objects."})):
        with pytest.raises(InputError, match="holds answers of another spec"):
            claim_output(changed, holds_answers=True)
    claim_output(other_model, holds_answers=False)  # the first run answered nothing: a fix
    with pytest.raises(InputError, match=r"'path': '/b'.* -> .*'path': '/models/a'"):
        claim_output(first, holds_answers=True)


def test_an_output_in_the_earlier_layout_is_not_resumed(tmp_path):
    """Its parts hold one "reason: detail" error column, which this version does not read."""
    first = spec(["/data/images"], tmp_path / "out")
    claim_output(first, holds_answers=False)
    run_file = tmp_path / "out" / "run.json"
    claimed = json.loads(run_file.read_text())
    assert claimed.pop("layout") == 2
    run_file.write_text(json.dumps(claimed))  # as an earlier version wrote it
    with pytest.raises(InputError, match="earlier version of stf infer"):
        claim_output(first, holds_answers=True)
    claim_output(first, holds_answers=False)  # nothing answered there yet: the claim is redone
    assert json.loads(run_file.read_text())["layout"] == 2
