r"""Answer normalisation and VQA accuracy, as the benchmarks' official code computes them.

Two normalisers exist and both are used, each where its benchmark's own scorer uses it:

- :func:`official_answer`: the VQA API's ``vqaEval.py`` (VQAv2, and VizWiz, whose API copies it),
  for a prediction; the human answers get only its punctuation step, and only when they are not
  all the same (the official code assumes the annotations are normalised already).
- :func:`evalai_answer`: EvalAI's processor (``EvalAIAnswerProcessor`` in LLaVA's
  ``m4c_evaluator.py``), which lower-cases and deletes commas and question marks first. TextVQA
  scores both sides with it, and the VQAv2 and VizWiz submission files carry its output.

Their quirks are kept on purpose, since a score must match the official one: the period pattern's
``(?!<=\d)`` is a look-ahead for the text "<=digit" (so every period not followed by a digit goes),
at most 32 periods are removed (the official code passes ``re.UNICODE``, 32, as the count), and the
punctuation test reads the text before any replacement.
"""

from __future__ import annotations

import re
from collections.abc import Sequence


def _pairs(text: str) -> dict[str, str]:
    """``word=replacement`` pairs, separated by white space."""
    return dict(pair.split("=", 1) for pair in text.split())


# The VQA API's contractions (EvalAI's are the same).
CONTRACTIONS = _pairs(
    """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn't've
couldnt've=couldn't've didnt=didn't doesnt=doesn't dont=don't hadnt=hadn't
hadnt've=hadn't've hadn'tve=hadn't've hasnt=hasn't havent=haven't hed=he'd hed've=he'd've
he'dve=he'd've hes=he's howd=how'd howll=how'll hows=how's Id've=I'd've I'dve=I'd've Im=I'm
Ive=I've isnt=isn't itd=it'd itd've=it'd've it'dve=it'd've itll=it'll let's=let's maam=ma'am
mightnt=mightn't mightnt've=mightn't've mightn'tve=mightn't've mightve=might've
mustnt=mustn't mustve=must've neednt=needn't notve=not've oclock=o'clock oughtnt=oughtn't
ow's'at='ow's'at 'ows'at='ow's'at 'ow'sat='ow's'at shant=shan't shed've=she'd've
she'dve=she'd've she's=she's shouldve=should've shouldnt=shouldn't shouldnt've=shouldn't've
shouldn'tve=shouldn't've somebody'd=somebodyd somebodyd've=somebody'd've
somebody'dve=somebody'd've somebodyll=somebody'll somebodys=somebody's someoned=someone'd
someoned've=someone'd've someone'dve=someone'd've someonell=someone'll someones=someone's
somethingd=something'd somethingd've=something'd've something'dve=something'd've
somethingll=something'll thats=that's thered=there'd thered've=there'd've
there'dve=there'd've therere=there're theres=there's theyd=they'd theyd've=they'd've
they'dve=they'd've theyll=they'll theyre=they're theyve=they've twas='twas wasnt=wasn't
wed've=we'd've we'dve=we'd've weve=we've werent=weren't whatll=what'll whatre=what're
whats=what's whatve=what've whens=when's whered=where'd wheres=where's whereve=where've
whod=who'd whod've=who'd've who'dve=who'd've wholl=who'll whos=who's whove=who've
whyll=why'll whyre=why're whys=why's wont=won't wouldve=would've wouldnt=wouldn't
wouldnt've=wouldn't've wouldn'tve=wouldn't've yall=y'all yall'll=y'all'll y'allll=y'all'll
yall'd've=y'all'd've y'alld've=y'all'd've y'all'dve=y'all'd've youd=you'd youd've=you'd've
you'dve=you'd've youll=you'll youre=you're youve=you've
"""
)
# VizWiz's copy of the VQA API keeps an older list, with curly apostrophes in most replacements.
VIZWIZ_CONTRACTIONS = _pairs(
    """
aint=ain't arent=aren't cant=can't couldve=could've couldnt=couldn't couldn'tve=couldn’t’ve
couldnt’ve=couldn’t’ve didnt=didn’t doesnt=doesn’t dont=don’t hadnt=hadn’t
hadnt’ve=hadn’t’ve hadn'tve=hadn’t’ve hasnt=hasn’t havent=haven’t hed=he’d hed’ve=he’d’ve
he’dve=he’d’ve hes=he’s howd=how’d howll=how’ll hows=how’s Id’ve=I’d’ve I’dve=I’d’ve Im=I’m
Ive=I’ve isnt=isn’t itd=it’d itd’ve=it’d’ve it’dve=it’d’ve itll=it’ll let’s=let’s maam=ma’am
mightnt=mightn’t mightnt’ve=mightn’t’ve mightn’tve=mightn’t’ve mightve=might’ve
mustnt=mustn’t mustve=must’ve neednt=needn’t notve=not’ve oclock=o’clock oughtnt=oughtn’t
ow’s’at=’ow’s’at ’ows’at=’ow’s’at ’ow’sat=’ow’s’at shant=shan’t shed’ve=she’d’ve
she’dve=she’d’ve she’s=she’s shouldve=should’ve shouldnt=shouldn’t shouldnt’ve=shouldn’t’ve
shouldn’tve=shouldn’t’ve somebody’d=somebodyd somebodyd’ve=somebody’d’ve
somebody’dve=somebody’d’ve somebodyll=somebody’ll somebodys=somebody’s someoned=someone’d
someoned’ve=someone’d’ve someone’dve=someone’d’ve someonell=someone’ll someones=someone’s
somethingd=something’d somethingd’ve=something’d’ve something’dve=something’d’ve
somethingll=something’ll thats=that’s thered=there’d thered’ve=there’d’ve
there’dve=there’d’ve therere=there’re theres=there’s theyd=they’d theyd’ve=they’d’ve
they’dve=they’d’ve theyll=they’ll theyre=they’re theyve=they’ve twas=’twas wasnt=wasn’t
wed’ve=we’d’ve we’dve=we’d’ve weve=we've werent=weren’t whatll=what’ll whatre=what’re
whats=what’s whatve=what’ve whens=when’s whered=where’d wheres=where's whereve=where’ve
whod=who’d whod’ve=who’d’ve who’dve=who’d’ve wholl=who’ll whos=who’s whove=who've
whyll=why’ll whyre=why’re whys=why’s wont=won’t wouldve=would’ve wouldnt=wouldn’t
wouldnt’ve=wouldn’t’ve wouldn’tve=wouldn’t’ve yall=y’all yall’ll=y’all’ll y’allll=y’all’ll
yall’d’ve=y’all’d’ve y’alld’ve=y’all’d’ve y’all’dve=y’all’d’ve youd=you’d youd’ve=you’d’ve
you’dve=you’d’ve youll=you’ll youre=you’re youve=you’ve
"""
)
NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (
    ";",
    r"/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_OFFICIAL_COMMA = re.compile(r"(\d)(\,)(\d)")
_EVALAI_COMMA = re.compile(r"(?<=\d)(\,)+(?=\d)")
_MAX_PERIODS = 32  # re.UNICODE, passed by the official code where re.sub takes its count


def _punctuation(text: str, comma: re.Pattern) -> str:
    """Each mark is deleted when it touches a space (or the text has a digit,digit), else made a
    space; then periods not followed by a digit go."""
    out = text
    for mark in PUNCTUATION:
        if (mark + " " in text or " " + mark in text) or comma.search(text) is not None:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, _MAX_PERIODS)


def _digits_and_articles(text: str, contractions: dict[str, str] = CONTRACTIONS) -> str:
    words = [NUMBERS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(contractions.get(word, word) for word in words)


def official_answer(text: str) -> str:
    """A prediction as ``vqaEval.py`` compares it."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text, _OFFICIAL_COMMA))


def evalai_answer(text: str) -> str:
    """An answer as EvalAI's processor leaves it."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text, _EVALAI_COMMA))


def _agreement(prediction: str, humans: Sequence[str]) -> float:
    """The mean over each human answer left out of min(1, others that equal the prediction / 3)."""
    if not humans:
        return 0.0
    matches = sum(1 for answer in humans if answer == prediction)
    total = 0.0
    for answer in humans:
        others = matches - (answer == prediction)
        total += min(1.0, others / 3)
    return total / len(humans)


def vqa_accuracy(prediction: str, humans: Sequence[str]) -> float:
    """VQAv2 / VizWiz accuracy of one prediction against the human answers (``vqaEval.py``)."""
    if len(set(humans)) > 1:
        humans = [_punctuation(answer, _OFFICIAL_COMMA) for answer in humans]
    return _agreement(official_answer(prediction), humans)


def textvqa_accuracy(prediction: str, humans: Sequence[str]) -> float:
    """TextVQA accuracy (LLaVA's ``TextVQAAccuracyEvaluator``): both sides through EvalAI's
    processor, then the same agreement."""
    return _agreement(evalai_answer(prediction), [evalai_answer(a) for a in humans])


def vizwiz_accuracy(prediction: str, humans: Sequence[str]) -> float:
    """VizWiz accuracy (VizWiz's API, its copy of ``vqaEval.py``): the prediction through the
    same steps with its contractions, the human answers as they are, whether or not they
    differ."""
    text = prediction.replace("\n", " ").replace("\t", " ").strip()
    return _agreement(
        _digits_and_articles(_punctuation(text, _OFFICIAL_COMMA), VIZWIZ_CONTRACTIONS), humans
    )
