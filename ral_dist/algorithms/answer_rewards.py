"""Text reward terms (RAL.md §4): exact match on the <answer> content, and the format check."""

from __future__ import annotations

import re
from typing import Literal

from ral_dist.algorithms.score import Score, never_raises

_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_THINK_ANSWER = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
_ANSWER_ONLY = re.compile(r"\s*<answer>(.*?)</answer>\s*", re.DOTALL)

_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_ARTICLES = {"a", "an", "the"}
# A bare option letter: "b", "(b)", "[b]", "b.", "b)", "b:", "option b", "choice (b)".
_OPTION_ONLY = re.compile(r"(?:option|choice)?\s*[(\[]?([a-z])[)\]]?\s*[.:)]?")
# An option letter leading an option text: "(b) red car", "b. red car", "b) red car".
_OPTION_LEAD = re.compile(r"(?:option\s+|choice\s+)?(?:[(\[]([a-z])[)\]]|([a-z])[.)])\s+\S.*", re.DOTALL)
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# Tokens: a number (minus only when not glued to a word, as in "x-1"), or a run of letters/digits.
# Everything else (punctuation, symbols) separates tokens and is dropped.
_TOKEN = re.compile(r"(?:(?<![\w.])-)?\d+(?:\.\d+)?(?![\w])|[^\W_]+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def extract_answer(response: str) -> str | None:
    """Stripped content of the last <answer>...</answer>, or None if there is none."""
    if not isinstance(response, str):
        return None
    found = _ANSWER.findall(response)
    return found[-1].strip() if found else None


def _canonical_number(tok: str) -> str:
    """'3.0' -> '3', '03.50' -> '3.5', '-0' -> '0'."""
    neg = tok.startswith("-")
    whole, _, frac = tok.lstrip("-").partition(".")
    out = (whole.lstrip("0") or "0") + ("." + frac.rstrip("0") if frac.rstrip("0") else "")
    return "-" + out if neg and out != "0" else out


def normalize_answer(s: str) -> str:
    """Canonical form for comparison (project choice, RAL.md §4).

    Lowercase; whitespace collapsed; option letters "(B)", "B.", "B)", "option b", "(b) red car" -> "b";
    punctuation dropped except the decimal point and leading minus of numbers; "1,000" -> "1000";
    "3.0" -> "3"; number words zero..twenty -> digits; articles a/an/the removed.
    """
    s = " ".join(str(s).lower().split())
    option = _OPTION_ONLY.fullmatch(s) or _OPTION_LEAD.fullmatch(s)
    if option:
        return option.group(1) or option.group(2)
    s = _THOUSANDS_COMMA.sub("", s)
    out = []
    for tok in _TOKEN.findall(s):
        if tok in _ARTICLES:
            continue
        tok = _NUMBER_WORDS.get(tok, tok)
        out.append(_canonical_number(tok) if _NUMBER.fullmatch(tok) else tok)
    return " ".join(out)


def answer_or_reason(response: str) -> tuple[str | None, str | None]:
    """(the content of the last <answer> tag, None), or (None, why a task rule scores the response 0)."""
    if not isinstance(response, str):
        return None, "not_a_string"
    answer = extract_answer(response)
    if answer is None:
        return None, "no_answer_tag"
    return (answer, None) if answer else (None, "empty_answer")


@never_raises
def exact_match(response: str, ground_truth: str) -> Score:
    """1.0 when the normalised content of the last <answer> tag equals the normalised ground truth."""
    answer, reason = answer_or_reason(response)
    if answer is None:
        return Score(0.0, reason)
    return Score(1.0 if normalize_answer(answer) == normalize_answer(ground_truth) else 0.0, None)


def _tag_problem(response: str, tags: tuple[str, ...]) -> str | None:
    """Reason if any tag is missing or repeated, else None."""
    for tag in tags:
        n = response.count(tag)
        if n == 0:
            return "no_" + tag.strip("</>") + "_tag"
        if n > 1:
            return "duplicate_tags"
    return None


@never_raises
def format_score(response: str, mode: Literal["think", "answer_only"] = "think") -> Score:
    """1.0 when the response is exactly <think>X</think><answer>Y</answer> (think mode) or <answer>Y</answer>
    (answer_only, the RAL-zero variant), each tag once, X and Y non-empty; whitespace is allowed only around
    and between the blocks."""
    if not isinstance(response, str):
        return Score(0.0, "not_a_string")
    if mode == "think":
        problem = _tag_problem(response, ("<think>", "</think>", "<answer>", "</answer>"))
        pattern = _THINK_ANSWER
    elif mode == "answer_only":
        if "<think>" in response or "</think>" in response:
            return Score(0.0, "unexpected_think_tag")
        problem = _tag_problem(response, ("<answer>", "</answer>"))
        pattern = _ANSWER_ONLY
    else:
        return Score(0.0, f"unknown_format_mode_{mode}")
    if problem:
        return Score(0.0, problem)
    match = pattern.fullmatch(response)
    if match is None:
        return Score(0.0, "text_outside_tags")
    if mode == "think" and not match.group(1).strip():
        return Score(0.0, "empty_think")
    if not match.groups()[-1].strip():
        return Score(0.0, "empty_answer")
    return Score(1.0, None)
