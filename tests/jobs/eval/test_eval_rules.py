"""The official rules, one by one, on values worked out by hand from the official scripts: answer
normalisation (the VQA API's and EvalAI's), VQA accuracy, POPE's yes/no, MME's yes/no, ScienceQA's
letter, MMBench's option inference and circular rounds, GQA's normalisation, TextVQA's question
read back from a prompt, and the house normalisation of custom question files."""

import pytest

from pipelines.eval.benchmarks.custom import normalize_answer
from pipelines.eval.benchmarks.gqa import prediction
from pipelines.eval.benchmarks.mmbench import can_infer, rounds
from pipelines.eval.benchmarks.mme import reads_as
from pipelines.eval.benchmarks.pope import confusion, says_no
from pipelines.eval.benchmarks.sqa import letter_of
from pipelines.eval.benchmarks.textvqa import question_of
from pipelines.eval.vqa_accuracy import (
    evalai_answer,
    official_answer,
    textvqa_accuracy,
    vizwiz_accuracy,
    vqa_accuracy,
)


@pytest.mark.parametrize(
    "given,evalai,official",
    [
        ("Yes", "yes", "yes"),
        ("Two.", "2", "2"),
        (
            "The poster shows a 10% discount.",
            "poster shows 10% discount",
            "poster shows 10% discount",
        ),
        ("e-mail", "e mail", "e mail"),
        ("well-known, yes!", "well known yes", "well known yes"),
        ("1,000", "1000", "1000"),
        ("U.S.A.", "usa", "usa"),
        ("a", "", ""),
        ("dog's toy", "dog 's toy", "dog's toy"),  # EvalAI splits 's off; the VQA API does not
        ("3.5", "3.5", "3.5"),  # a period before a digit stays
        ("What?", "what", "what"),
        ("dont", "don't", "don't"),  # contractions put back
        ("None", "0", "0"),  # number words: none is zero
        ("6:00", "6:00", "6:00"),  # ':' is no punctuation to either
        ("left / right", "left right", "left right"),  # a mark next to a space is deleted
        ("left/right", "left right", "left right"),  # otherwise it becomes a space
        ("Red\tcar\n", "red car", "red car"),
    ],
)
def test_answer_normalisation_as_the_official_code_does_it(given, evalai, official):
    assert evalai_answer(given) == evalai
    assert official_answer(given) == official


def test_more_than_32_periods_are_not_all_removed():
    """The official code passes re.UNICODE (32) where re.sub takes its count."""
    assert official_answer("." * 40) == "." * 8


@pytest.mark.parametrize(
    "matches,score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_vqa_accuracy_averages_over_the_leave_one_out_sets(matches, score):
    humans = ["yes"] * matches + ["no"] * (10 - matches)
    assert vqa_accuracy("Yes.", humans) == pytest.approx(score)
    assert textvqa_accuracy("Yes.", humans) == pytest.approx(score)


def test_vqa_human_answers_get_punctuation_only_and_only_when_they_differ():
    # Differing answers: "t-shirt" becomes "t shirt"; digits and articles are not touched.
    assert vqa_accuracy("T-shirt", ["t-shirt"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    # As in the official code, a mark at the end becomes a space that stays: "dog!" is "dog ".
    assert vqa_accuracy("dog", ["dog!"] * 3 + ["cat"] * 7) == 0.0
    assert vqa_accuracy("dog", ["dog!"] * 10) == 0.0  # identical answers are not processed
    assert vqa_accuracy("2", ["two"] * 10) == 0.0  # the prediction is mapped, the humans are not
    assert vqa_accuracy("the dog", ["dog"] * 10) == 1.0  # the prediction loses its article
    assert textvqa_accuracy("2", ["two"] * 10) == 1.0  # TextVQA processes both sides


@pytest.mark.parametrize(
    "text,no",
    [
        ("No", True),
        ("No, there is not.", True),
        ("Yes", False),
        ("NO", False),  # case matters: only No, no and not
        ("Not really", False),
        ("There is no dog.", True),
        ("Yes. There is no dog.", False),  # only the first sentence counts
        ("Yes, there is no dog", True),
        ("", False),
        ("no\nyes", False),  # words are split at spaces only
    ],
)
def test_pope_reads_yes_and_no_as_llavas_script_does(text, no):
    assert says_no(text) is no


def test_pope_counts_an_unanswered_question_as_the_wrong_answer():
    metrics = confusion([(True, True), (None, True), (None, False), (False, False)])
    assert (metrics["tp"], metrics["fn"], metrics["fp"], metrics["tn"]) == (1, 1, 1, 1)
    assert metrics["accuracy"] == 50.0 and metrics["yes_ratio"] == 50.0  # of the answers given


@pytest.mark.parametrize(
    "text,reading",
    [
        ("Yes", "yes"),
        ("no", "no"),
        ("Yes.", "yes"),
        ("Not sure", "no"),  # "not " holds "no"
        ("None", "no"),
        ("nope", "no"),
        ("I think yes", "other"),  # only the first four characters are read
        ("yesno", "yes"),
        ("", "other"),
    ],
)
def test_mme_reads_the_first_four_characters(text, reading):
    assert reads_as(text) == reading


@pytest.mark.parametrize(
    "text,letter",
    [
        ("A", "A"),
        ("E", "E"),
        ("A.", None),  # neither a bare letter nor "X. ..." (LLaVA's script marks it wrong)
        ("A ", None),
        (" A", None),
        ("B. apostrophe", "B"),
        ("The answer is C.", "C"),
        ("The answer is C because", "C"),  # the pattern's "." is any character
        ("The answer is C. The answer is D.", None),  # two matches
        ("The answer is F.", "F"),  # read, then out of the problem's choices
        ("F", None),
        ("a", None),
    ],
)
def test_scienceqa_reads_the_letter_as_llavas_script_does(text, letter):
    assert letter_of(text) == letter


CHOICES = {"A": "red", "B": "green", "C": "blue", "D": "black"}


@pytest.mark.parametrize(
    "text,option",
    [
        ("A", "A"),
        ("(B)", "B"),
        ("C.", "C"),
        ("The answer is D.", "D"),
        ("A or B", None),  # two letters, and no option text either
        ("It is green.", "B"),  # no letter: the one option named
        ("red or blue", None),
        ("Cannot determine the answer", "Z"),
        ("Z", "Z"),
        ("a", None),  # letters are upper case
        ("Failed to obtain answer via API, black", "D"),  # the letter step gives up, text decides
    ],
)
def test_mmbench_infers_the_option_as_vlmevalkit_does(text, option):
    assert can_infer(text, CHOICES) == option


def test_mmbench_rounds_shift_the_options_and_their_answer():
    row = {
        "index": "7",
        "question": "q",
        "A": "one",
        "B": "two",
        "C": "three",
        "D": "",
        "answer": "C",
    }
    made = rounds(row)
    assert [r["index"] for r in made] == ["7", "1000007", "2000007"]
    assert [(r["A"], r["B"], r["C"], r["D"]) for r in made] == [
        ("one", "two", "three", ""),
        ("two", "three", "one", ""),
        ("three", "one", "two", ""),
    ]
    assert [r[r["answer"]] for r in made] == ["three"] * 3  # the answer moves with its option


@pytest.mark.parametrize(
    "text,read", [("Yes.", "yes"), ("left...", "left"), ("The Cat", "the cat"), ("no. ", "no. ")]
)
def test_gqa_strips_trailing_periods_and_lowercases(text, read):
    assert prediction(text) == read


@pytest.mark.parametrize(
    "prompt,question",
    [
        (
            "What is it?\nReference OCR token: A, B\nAnswer the question using a single word or phrase.",
            "what is it?",
        ),
        ("Reference OCR token: A\nWhat is it?\nAnswer briefly.", "what is it?"),
        ("What is it?\nAnswer the question using a single word or phrase.", "what is it?"),
        ("OCR tokens: a b Question: What is it? Short answer:", "what is it?"),
    ],
)
def test_textvqa_reads_the_question_back_from_the_prompt(prompt, question):
    assert question_of(prompt) == question


def test_textvqa_refuses_a_prompt_it_cannot_read():
    with pytest.raises(ValueError):
        question_of("one line only")


@pytest.mark.parametrize(
    "given,expected",
    [
        ("Two.", "two"),
        ("2", "two"),
        ("The Top Left", "top left"),
        ("  red!! ", "red"),
        ("A", "a"),  # a multiple-choice letter is the answer, not an article
        ("3.5", "3.5"),
        ("1,000", "1000"),
        ("Don't", "dont"),
        ("\u201cRed\u201d\u3002", "red"),
        ("\uff12", "two"),
        ("Stra\u00dfe", "strasse"),
    ],
)
def test_custom_question_files_use_the_house_normalisation(given, expected):
    assert normalize_answer(given) == expected


def test_vizwiz_leaves_the_human_answers_as_they_are():
    """VizWiz's API processes the prediction only (VQAv2's also cleans differing human answers)."""
    humans = ["t-shirt"] * 4 + ["shirt"] * 6
    assert vizwiz_accuracy("T-shirt", humans) == 0.0  # "t shirt" against "t-shirt"
    assert vqa_accuracy("T-shirt", humans) == 1.0
    assert vizwiz_accuracy("Unanswerable.", ["unanswerable"] * 10) == 1.0
    assert vizwiz_accuracy("dont", ["don’t"] * 4) == 1.0  # its contractions: curly apostrophes
