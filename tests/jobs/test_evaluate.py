"""VQA-style answer normalisation and scoring (the eval job itself is tested in test_infer)."""

import pytest

from pipelines.evaluate import normalize_answer, score


@pytest.mark.parametrize(
    "given,expected",
    [
        ("Two.", "two"),
        ("2", "two"),
        ("The Top Left", "top left"),
        ("  red!! ", "red"),
        ("a circle", "circle"),
    ],
)
def test_normalisation(given, expected):
    assert normalize_answer(given) == expected


def test_score_by_type():
    rows = [
        {"answer": "two", "prediction": "2", "question_type": "count"},
        {"answer": "red", "prediction": "blue", "question_type": "color"},
        {"answer": "red", "prediction": "Red.", "question_type": "color"},
    ]
    report = score(rows)
    assert report.n == 3 and report.accuracy == pytest.approx(2 / 3)
    assert report.by_type == {"color": 0.5, "count": 1.0}
