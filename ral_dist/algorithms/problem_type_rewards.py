"""The task reward by problem type (`reward.task: video_r1`): Video-R1's accuracy rules (Feng et al. 2025,
src/r1-v/src/open_r1/grpo.py, accuracy_reward), written for this project, with the project's choices marked.

Every rule compares the content of the last ``<answer>…</answer>`` of the response with the ground truth (its tags
stripped when it still carries them) and returns a `Score` in [0, 1]; a response or ground truth a rule cannot read
scores 0 with a reason, never an exception.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Literal, get_args

import jiwer
from rouge_score import rouge_scorer, tokenizers

from ral_dist.algorithms.answer_rewards import answer_or_reason, extract_answer
from ral_dist.algorithms.score import Score, never_raises

ProblemType = Literal["multiple choice", "numerical", "OCR", "free-form", "regression"]  # Video-R1's problem_type
PROBLEM_TYPES: tuple[str, ...] = get_args(ProblemType)

_ANSWER_TAG = re.compile(r"</?answer>")
# A bare option letter: "B", "b", "(B)", "[B]", "B.", "B)", "B:", "Option B", "answer: (B)".
_LETTER_ONLY = re.compile(r"(?:(?:option|choice|answer)\s*:?\s*)?[(\[]?([a-z])[)\]]?\s*[.:)]?", re.IGNORECASE)
# A letter leading its option's text: "B. red car", "(B) red car", "B) red car", "B: red car".
_LETTER_LEAD = re.compile(r"(?:[(\[]([a-z])[)\]]|([a-z])[.:)])\s+\S.*", re.IGNORECASE | re.DOTALL)
_REGRESSION_EPS = 1e-9  # Video-R1's, on both sides of the relative error


def strip_answer_tags(ground_truth):
    """The content of the last ``<answer>…</answer>`` when the text has one (Video-R1 solutions do), else the text
    without stray tags; a text without tags comes back unchanged (so `exact` scores as before)."""
    if not isinstance(ground_truth, str) or "answer>" not in ground_truth:
        return ground_truth
    content = extract_answer(ground_truth)
    return content if content is not None else _ANSWER_TAG.sub("", ground_truth).strip()


def option_letter(text: str) -> str | None:
    """The option letter a multiple-choice answer names, upper case, or None.

    Project choice: Video-R1 compares the stripped strings, so "(B)" or "B. red car" would score 0 against "B".
    The prompt asks for the letter, and how it is decorated depends on the template and the SFT data, not on
    whether the choice is right (the format term judges form). A letter followed by text ("B. red car") counts
    as that letter, whatever the text says; text with no letter ("red car") is not an answer.
    """
    text = text.strip()
    match = _LETTER_ONLY.fullmatch(text) or _LETTER_LEAD.fullmatch(text)
    if match is None:
        return None
    return next(g for g in match.groups() if g).upper()


def parse_number(text: str) -> float | None:
    """A finite float from the whole text with its commas removed ("1,234.5" -> 1234.5), as Video-R1 reads
    numbers; None for anything else ("12 apples", "nan", "")."""
    try:
        value = float(text.replace(",", "").strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def multiple_choice(answer: str, truth: str) -> Score:
    """1 when the answer names the ground truth's option letter."""
    expected = option_letter(truth)
    if expected is None:
        return Score(0.0, "ground_truth_not_an_option_letter")
    given = option_letter(answer)
    if given is None:
        return Score(0.0, "not_an_option_letter")
    return Score(1.0 if given == expected else 0.0, None)


def numerical(answer: str, truth: str) -> Score:
    """Video-R1: 0 when a decimal point or comma is in one but not the other ("3" vs "3.0", "1234" vs "1,234"),
    else 1 when both numbers agree after rounding to 2 decimals."""
    expected = parse_number(truth)
    if expected is None:
        return Score(0.0, "ground_truth_not_a_number")
    if _has_decimal_mark(answer) != _has_decimal_mark(truth):
        return Score(0.0, "decimal_mismatch")
    given = parse_number(answer)
    if given is None:
        return Score(0.0, "not_a_number")
    return Score(1.0 if round(given, 2) == round(expected, 2) else 0.0, None)


def _has_decimal_mark(text: str) -> bool:
    return "." in text or "," in text


def ocr(answer: str, truth: str) -> Score:
    """1 - word error rate (word-level edit distance / ground-truth words), clipped to [0, 1]; case-sensitive.
    Words are split on any whitespace, as Video-R1 does (jiwer alone would keep "a\\nb" one word)."""
    error_rate = jiwer.wer(" ".join(truth.split()), " ".join(answer.split()))
    return Score(min(max(1.0 - error_rate, 0.0), 1.0), None)


@functools.cache
def _rouge() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


@functools.cache
def _rouge_tokenizer() -> tokenizers.DefaultTokenizer:
    return tokenizers.DefaultTokenizer(use_stemmer=True)


def free_form(answer: str, truth: str) -> Score:
    """Mean of the ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge-score, Porter stemming), clipped to [0, 1].
    rouge-score keeps only ASCII letters and digits: a ground truth without any cannot be scored."""
    if not _rouge_tokenizer().tokenize(truth):
        return Score(0.0, "ground_truth_without_rouge_tokens")
    scores = _rouge().score(truth, answer)
    mean = sum(s.fmeasure for s in scores.values()) / len(scores)
    return Score(min(max(mean, 0.0), 1.0), None)


def regression(answer: str, truth: str) -> Score:
    """1 - (|out - gt| + 1e-9) / (|gt| + 1e-9), clipped to [0, 1] (Video-R1's epsilon, so gt = 0 does not divide
    by zero). Project choice: an answer equal to the ground truth scores exactly 1; Video-R1's formula gives
    1 - 1e-9 / (|gt| + 1e-9) there, and 0 for gt = 0 answered 0."""
    expected = parse_number(truth)
    if expected is None:
        return Score(0.0, "ground_truth_not_a_number")
    given = parse_number(answer)
    if given is None:
        return Score(0.0, "not_a_number")
    if given == expected:
        return Score(1.0, None)
    relative_error = (abs(given - expected) + _REGRESSION_EPS) / (abs(expected) + _REGRESSION_EPS)
    return Score(1.0 - min(relative_error, 1.0), None)


TYPE_RULES = {"multiple choice": multiple_choice, "numerical": numerical, "OCR": ocr, "free-form": free_form,
              "regression": regression}


@never_raises
def problem_type_accuracy(response: str, ground_truth: str, problem_type: str) -> Score:
    """Video-R1's accuracy of a response by the sample's problem type (one of `PROBLEM_TYPES`).

    The answer is the content of the last <answer> tag (project's `extract_answer`; Video-R1 takes the first).
    """
    rule = TYPE_RULES.get(problem_type)
    if rule is None:
        return Score(0.0, "unknown_problem_type")
    truth = strip_answer_tags(ground_truth)
    if not isinstance(truth, str):
        return Score(0.0, "ground_truth_not_a_string")
    if not truth.strip():
        return Score(0.0, "empty_ground_truth")
    answer, reason = answer_or_reason(response)
    if answer is None:
        return Score(0.0, reason)
    return rule(answer, truth.strip())
