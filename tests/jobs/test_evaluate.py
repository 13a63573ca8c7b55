"""VQA-style answer normalisation and scoring (the eval job itself is tested in test_infer)."""

import pytest
from report_page import read_page

from pipelines.evaluate import normalize_answer, score


@pytest.mark.parametrize(
    "given,expected",
    [
        ("Two.", "two"),
        ("2", "two"),
        ("The Top Left", "top left"),
        ("  red!! ", "red"),
        ("a circle", "circle"),
        ("A", "a"),  # a multiple-choice letter is the answer, not an article
        ("3.5", "3.5"),  # a decimal point is no punctuation: not "35"
        ("1,000", "1000"),
        ("left/right", "left right"),
        ("Don't", "dont"),
        ("\u201cRed\u201d\u3002", "red"),  # curly quotes, an ideographic full stop
        ("\uff12", "two"),  # a full-width digit
        ("STRASSE", "strasse"),
        ("Stra\u00dfe", "strasse"),
        ("cafe\u0301", "caf\u00e9"),
    ],
)
def test_normalisation(given, expected):
    assert normalize_answer(given) == expected


@pytest.mark.parametrize("prediction", ["", ".", "The", "an", None])
def test_an_empty_prediction_never_matches_a_letter_answer(prediction):
    assert score([{"answer": "A", "prediction": prediction}]).accuracy == 0.0
    assert score([{"answer": "A", "prediction": "A."}]).accuracy == 1.0


def test_question_types_that_are_not_strings_are_scored():
    rows = [{"answer": "2", "prediction": "two", "question_type": 1}]
    assert score([*rows, {"answer": "x", "prediction": "y", "question_type": "b"}]).by_type == {
        "1": 1.0,
        "b": 0.0,
    }


def test_score_by_type():
    rows = [
        {"answer": "two", "prediction": "2", "question_type": "count"},
        {"answer": "red", "prediction": "blue", "question_type": "color"},
        {"answer": "red", "prediction": "Red.", "question_type": "color"},
    ]
    report = score(rows)
    assert report.n == 3 and report.accuracy == pytest.approx(2 / 3)
    assert report.by_type == {"color": 0.5, "count": 1.0}


def test_the_html_report_shows_the_reports_numbers_wrong_examples_first_and_escapes_text(
    tmp_path,
):
    from PIL import Image

    from pipelines.eval_report import render_report
    from pipelines.evaluate import EvalReport
    from pipelines.spec import StorageOptions
    from pipelines.synth import Baselines

    Image.new("RGB", (400, 300), "red").save(tmp_path / "a.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    rows = [
        {"question": "What color?", "answer": "red", "prediction": "red", "question_type": "color"},
        {
            "question": "<script>alert(1)</script>",
            "answer": "two",
            "prediction": "</td><b>x",
            "question_type": "count",
        },
        {"question": "How many?", "answer": "one", "prediction": None, "question_type": "count"},
    ]
    for row, image in zip(rows, ("a.jpg", "broken.jpg", "missing.jpg"), strict=True):
        row["image"] = str(tmp_path / image)
        row["correct"] = row["prediction"] == row["answer"]
    scored = score(rows)
    baselines = Baselines(
        chance=0.3,
        majority=0.4,
        chance_by_type={"color": 1 / 6, "count": 0.25},
        majority_by_type={"color": 0.2, "count": 0.5},
    )
    report = EvalReport(
        **scored.model_dump(),
        errors=1,
        model="m",
        questions="q.jsonl",
        baselines=baselines,
        examples=[],
    )
    page = read_page(render_report(report, rows, StorageOptions()))
    assert page.values[("accuracy", "all")] == report.accuracy
    for kind, accuracy in report.by_type.items():
        assert page.values[("accuracy", kind)] == accuracy
        assert page.values[("chance", kind)] == baselines.chance_by_type[kind]
        assert page.values[("majority", kind)] == baselines.majority_by_type[kind]
    assert page.values[("majority", "all")] == 0.4
    assert page.rows == ["wrong", "wrong", "right"]
    # One readable image, embedded as a thumbnail; the broken and missing ones say so.
    assert len(page.images) == 1 and page.images[0].startswith("data:image/jpeg;base64,")
    assert "".join(page.text).count("no image") == 2
    # User text is text: no script, and the markup in a prediction stays visible as text.
    assert page.scripts == 0
    assert "<script>alert(1)</script>" in page.text and "</td><b>x" in page.text
