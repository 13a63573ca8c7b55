"""VQA-style answer normalisation and scoring; the in-process evaluator on a saved tiny model."""

import pytest

from pipelines.evaluate import evaluate_questions, normalize_answer, score
from pipelines.synth import write_corpus
from stf_model import build_tiny, save_model_dir


@pytest.mark.parametrize(
    "given,expected",
    [("Two.", "two"), ("2", "two"), ("The Top Left", "top left"), ("  red!! ", "red"),
     ("a circle", "circle")],
)  # fmt: skip
def test_normalisation(given, expected):
    assert normalize_answer(given) == expected


def test_score_by_type():
    rows = [
        {"answer": "two", "prediction": "2", "question_type": "count"},
        {"answer": "red", "prediction": "blue", "question_type": "color"},
        {"answer": "red", "prediction": "Red.", "question_type": "color"},
    ]
    report = score(rows)
    assert report["n"] == 3 and report["accuracy"] == pytest.approx(2 / 3)
    assert report["by_type"] == {"color": 0.5, "count": 1.0}


def test_evaluator_runs_a_model_dir_on_the_eval_split(tmp_path):
    write_corpus(tmp_path / "corpus", n=4, n_eval=6)
    save_model_dir(*build_tiny(), tmp_path / "model")
    report = evaluate_questions(str(tmp_path / "model"), tmp_path / "corpus" / "eval.jsonl",
                                batch_size=4)  # fmt: skip
    assert report["n"] == 6 and 0.0 <= report["accuracy"] <= 1.0
    assert set(report["baselines"]) == {"chance", "majority"} and len(report["examples"]) == 5
