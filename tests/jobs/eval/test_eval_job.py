"""`stf eval` end to end on the tests' local Ray with the tiny model: the published files in,
LLaVA's prompts asked through batch inference, LLaVA's answers file and the report out (POPE, MME,
MMBench with its circular rounds, ScienceQA with its questions without an image, the synthetic
split with its baselines, and the report page in a real browser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import benchmark_files as bf
from support.benchmark_files import read_jsonl
from support.eval_runs import eval_spec
from support.report_page import read_page

from pipelines.eval.job import run, summary_line
from pipelines.eval.report import EvalReport
from pipelines.eval.spec import EvalSpec
from pipelines.synth.corpus import write_corpus

pytestmark = pytest.mark.usefixtures("ray_local")
GENERATION = {"max_new_tokens": 3, "batch_size": 8}


def evaluate(model_dir: str, output: Path, **fields) -> tuple[EvalSpec, object]:
    spec = eval_spec(model={"path": model_dir}, output=output, inference=GENERATION, **fields)
    return spec, run(spec)


def answers_of(output: Path) -> list[dict]:
    return read_jsonl(output / "answers.jsonl")


@pytest.fixture(scope="module")
def suite_run(model_dir, tmp_path_factory):
    """`stf eval-suite` of POPE and MME for the tiny model: (spec, table, folder)."""
    from pipelines.eval.spec import SuiteSpec
    from pipelines.eval.suite import run as run_suite

    tmp_path = tmp_path_factory.mktemp("suite")
    pope, mme = bf.pope(tmp_path / "pope"), bf.mme(tmp_path / "mme")
    files = {
        "pope": {k: str(v) for k, v in pope.items()},
        "mme": {"questions": str(mme["questions"]), "annotations": str(mme["annotations"])},
    }
    spec = SuiteSpec.model_validate(
        {
            "models": [{"path": model_dir}],
            "benchmarks": files,
            "output": str(tmp_path / "suite"),
            "inference": GENERATION,
        }
    )
    return spec, run_suite(spec), tmp_path


def test_pope_end_to_end(suite_run):
    spec, _, tmp_path = suite_run
    out = tmp_path / "suite" / "tiny" / "pope"
    report = EvalReport.parse(json.loads((out / "report.json").read_text()), "pope")
    assert report.n == 8 and report.unanswered == 0 and report.errors == 0
    assert set(report.breakdown) == {"adversarial", "popular", "random"}
    assert report.score == pytest.approx(sum(b["f1"] for b in report.breakdown.values()) / 3)
    written = answers_of(out)
    questions = [
        json.loads(line)
        for line in (tmp_path / "pope" / "llava_pope_test.jsonl").read_text().splitlines()
    ]
    # LLaVA's answers file: the question's id and text as its prompt, the answer stripped.
    assert [a["question_id"] for a in written] == [q["question_id"] for q in questions]
    assert [a["prompt"] for a in written] == [q["text"] for q in questions]
    assert all(a["text"] == a["text"].strip() and a["model_id"] == "tiny" for a in written)
    pope_spec = spec.eval_spec(spec.models[0], "pope")
    assert summary_line(pope_spec, report).startswith("eval POPE (test): F1 (%)")
    # The same answers scored as a file give the same report.
    again = run(
        pope_spec.model_copy(
            update={
                "model": None,
                "answers": str(out / "answers.jsonl"),
                "output": str(tmp_path / "again"),
            }
        )
    )
    assert again.score == report.score and again.breakdown == report.breakdown


def test_mme_end_to_end_with_the_images_in_the_release_folder(suite_run):
    _, _, tmp_path = suite_run
    out = tmp_path / "suite" / "tiny" / "mme"
    report = EvalReport.parse(json.loads((out / "report.json").read_text()), "mme")
    assert report.n == 8 and report.unanswered == 0
    assert set(report.breakdown) == {"existence", "artwork", "code_reasoning"}
    assert (
        report.score
        == report.breakdown["existence"]["score"] + report.breakdown["artwork"]["score"]
    )
    assert [a["question_id"] for a in answers_of(out)][:2] == ["existence/000000006040.jpg"] * 2


def test_the_suite_table_sets_the_published_rows_beside_ours(suite_run):
    _, table, tmp_path = suite_run
    assert table.columns == ["pope", "mme"]  # the paper's order, whatever the spec's
    assert table.published["LLaVA-STF-7B (published)"] == {"pope": 86.0, "mme": 1482.8}
    lines = (tmp_path / "suite" / "table.md").read_text().splitlines()
    assert lines[0] == "| model | POPE | MME |"
    assert lines[2] == "| LLaVA-1.5-7B (published) | 85.9 | 1510.7 |"
    scores = [table.rows["tiny"][c].score for c in ("pope", "mme")]
    assert lines[4] == f"| tiny | {scores[0]:.1f} | {scores[1]:.1f} |"
    png = (tmp_path / "suite" / "table.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert (
        json.loads((tmp_path / "suite" / "table.json").read_text())["rows"]["tiny"]["pope"]["score"]
        == scores[0]
    )


def test_mmbench_asks_every_round_and_scores_circularly(model_dir, tmp_path):
    files = bf.mmbench(tmp_path / "mmb")  # no rounds in the file: made here
    _, report = evaluate(model_dir, tmp_path / "out", benchmark="mmbench", **files)
    written = answers_of(tmp_path / "out")
    assert len(written) == 4 + 2 + 3 and report.n == 3
    first = next(a for a in written if a["question_id"] == 1)
    assert first["prompt"] == "The picture shows one shape.\nWhich shape?\nA. circle\nB. square"
    assert first["options"] == ["circle", "square"] and first["option_char"] == ["A", "B"]
    shifted = next(a for a in written if a["question_id"] == 1000001)
    assert shifted["prompt"].endswith("A. square\nB. circle")
    images = sorted(p.name for p in (tmp_path / "out" / "staging" / "images").iterdir())
    assert images == ["0.png", "1.png", "2.png"]  # one decoded image per question


def test_scienceqa_asks_questions_without_an_image_too(model_dir, tmp_path):
    files = bf.sqa(tmp_path / "sqa")
    _, report = evaluate(
        model_dir,
        tmp_path / "out",
        benchmark="sqa_img",
        questions=files["questions"],
        annotations=[files["annotations"]],
        images=files["images"],
    )
    assert report.n == 4 and report.unanswered == 0 and report.errors == 0
    written = {a["question_id"]: a for a in answers_of(tmp_path / "out")}
    assert written["11"]["prompt"].startswith("<image>\nWhat is the name of the colony shown?")
    assert not written["4"]["prompt"].startswith("<image>")
    assert written["12"]["prompt"].startswith("<image>\nContext: Ducks swim.\n")


def test_a_wrong_image_folder_fails_before_the_model_loads(tmp_path):
    files = bf.pope(tmp_path / "pope")
    with pytest.raises(Exception, match="does not exist; set images"):
        evaluate(
            "/no/model/here",
            tmp_path / "out",
            benchmark="pope",
            questions=files["questions"],
            annotations=files["annotations"],
        )


@pytest.fixture(scope="module")
def synthetic_run(model_dir, tmp_path_factory):
    """One `stf eval` on a 12-question synthetic split: (spec, report, its folder)."""
    tmp_path = tmp_path_factory.mktemp("eval")
    write_corpus(tmp_path / "corpus", n=4, n_eval=12)
    spec, report = evaluate(
        model_dir, tmp_path / "eval", questions=tmp_path / "corpus" / "eval.jsonl"
    )
    return spec, report, tmp_path


def test_the_synthetic_split_reports_accuracy_with_its_baselines(synthetic_run):
    spec, report, tmp_path = synthetic_run
    assert report.benchmark == "custom" and report.n == 12 and report.errors == 0
    assert 0.0 <= report.score <= 100.0
    types = {
        json.loads(line)["question_type"]
        for line in (tmp_path / "corpus" / "eval.jsonl").read_text().splitlines()
    }
    assert set(report.breakdown) == types
    assert 0 < report.metrics["chance"] < 100 and set(report.baselines["chance"]) == types
    page = read_page((tmp_path / "eval" / "report.html").read_text())
    assert page.values[("score", "headline")] == report.score
    for kind, values in report.breakdown.items():
        assert page.values[("accuracy", kind)] == values["accuracy"]
        assert page.values[("chance", kind)] == report.baselines["chance"][kind]
    assert len(page.rows) == 12 and len(page.images) == 12
    assert "chance" in summary_line(spec, report)


def test_report_html_in_chromium(synthetic_run, browser, screenshots):
    """report.html opened from disk in a real browser: the numbers it shows are report.json's,
    every thumbnail decodes, and the chart draws one bar per question type."""
    from selenium.webdriver.common.by import By

    _, _, tmp_path = synthetic_run
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    browser.get((tmp_path / "eval" / "report.html").as_uri())
    shown = {
        (cell.get_attribute("class"), cell.get_attribute("data-type")): cell.text
        for cell in browser.find_elements(By.CSS_SELECTOR, "td[data-value]")
    }
    for kind, values in saved["breakdown"].items():
        assert float(shown[("accuracy", kind)]) == pytest.approx(values["accuracy"], abs=0.005)
        assert float(shown[("majority", kind)]) == pytest.approx(
            saved["baselines"]["majority"][kind], abs=0.005
        )
    headline = browser.find_element(By.CSS_SELECTOR, "span.score").text
    assert float(headline) == pytest.approx(saved["score"], abs=0.005)
    rows = browser.find_elements(
        By.CSS_SELECTOR, "table.examples tr.right, table.examples tr.wrong"
    )
    assert len(rows) == saved["n"] == 12
    decoded = browser.execute_script(
        "return [...document.images].map(i => i.complete && i.naturalWidth > 0)"
    )
    assert len(decoded) == 12 and all(decoded)
    labels = browser.execute_script(
        "return [...document.querySelectorAll('svg rect')].map(r => [r.previousElementSibling"
        ".textContent, r.getBBox().width > 0, r.getBBox().height > 0])"
    )
    assert labels == [[kind, True, True] for kind in saved["breakdown"]]
    browser.save_screenshot(str(screenshots / "eval_report.png"))
