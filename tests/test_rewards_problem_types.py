"""The reward table of `reward.task: video_r1`: per problem type, responses and ground truths with the score each
rule's definition gives (ral_dist/algorithms/problem_type_rewards.py; Video-R1's accuracy_reward). Exact numbers
where the arithmetic is exact in floating point; the regression cases pin Video-R1's formula itself."""

import pytest

from ral_dist.algorithms import (
    PROBLEM_TYPES,
    Score,
    option_letter,
    parse_number,
    problem_type_accuracy,
    strip_answer_tags,
)


def _tag(answer: str) -> str:
    return f"<think>reasoning</think><answer>{answer}</answer>"


def _regression(out: float, gt: float) -> float:
    """Video-R1's regression reward, written out: 1 - min(1, (|out - gt| + 1e-9) / (|gt| + 1e-9))."""
    return 1.0 - min(1.0, (abs(out - gt) + 1e-9) / (abs(gt) + 1e-9))


TABLE = [
    # problem type, response, ground truth, score, reason
    ("multiple choice", _tag("B"), "<answer>B</answer>", 1.0, None),  # the ground truth still in its tags
    ("multiple choice", _tag("(B)"), "B", 1.0, None),
    ("multiple choice", _tag("B."), "B", 1.0, None),
    ("multiple choice", _tag("B. red car"), "B", 1.0, None),
    ("multiple choice", _tag("b"), "B", 1.0, None),
    ("multiple choice", _tag("Option B"), "B", 1.0, None),
    ("multiple choice", _tag("C"), "B", 0.0, None),
    ("multiple choice", _tag("C. red car"), "B. red car", 0.0, None),  # the letter decides, not the text
    ("multiple choice", _tag("red car"), "B", 0.0, "not_an_option_letter"),
    ("multiple choice", "<answer>A</answer> no, <answer>B</answer>", "B", 1.0, None),  # the last tag
    ("multiple choice", "B", "B", 0.0, "no_answer_tag"),
    ("multiple choice", _tag("  "), "B", 0.0, "empty_answer"),
    ("multiple choice", _tag("B"), "red car", 0.0, "ground_truth_not_an_option_letter"),
    ("numerical", _tag("3"), "<answer>3</answer>", 1.0, None),
    ("numerical", _tag("3.0"), "3", 0.0, "decimal_mismatch"),  # Video-R1: a decimal point in one only
    ("numerical", _tag("3"), "3.0", 0.0, "decimal_mismatch"),
    ("numerical", _tag("3.004"), "3.0", 1.0, None),  # equal after rounding to 2 decimals
    ("numerical", _tag("3.01"), "3.0", 0.0, None),
    ("numerical", _tag("-2.5"), "-2.50", 1.0, None),
    ("numerical", _tag("1,234"), "1,234", 1.0, None),  # commas removed before comparing
    ("numerical", _tag("1,234.5"), "1234.50", 1.0, None),
    ("numerical", _tag("1234"), "1,234", 0.0, "decimal_mismatch"),  # Video-R1 counts the comma as a decimal mark
    ("numerical", _tag("twelve"), "12", 0.0, "not_a_number"),
    ("numerical", _tag("12 apples"), "12", 0.0, "not_a_number"),
    ("numerical", _tag("nan"), "12", 0.0, "not_a_number"),
    ("numerical", _tag("12"), "many", 0.0, "ground_truth_not_a_number"),
    ("numerical", "12", "12", 0.0, "no_answer_tag"),
    ("numerical", _tag(""), "12", 0.0, "empty_answer"),
    ("OCR", _tag("STOP AHEAD"), "<answer>STOP AHEAD</answer>", 1.0, None),
    ("OCR", _tag("a b x d"), "a b c d", 0.75, None),  # one substitution in 4 words
    ("OCR", _tag("a b"), "a b c d", 0.5, None),  # two deletions
    ("OCR", _tag("a b c d e"), "a b c d", 0.75, None),  # one insertion
    ("OCR", _tag("a x y z w v"), "a b", 0.0, None),  # WER 2.5, clipped
    ("OCR", _tag("stop ahead"), "STOP AHEAD", 0.0, None),  # case-sensitive, as Video-R1
    ("OCR", _tag("a\nb  c d"), "a b c d", 1.0, None),  # any whitespace separates words
    ("OCR", "a b c d", "a b c d", 0.0, "no_answer_tag"),
    ("free-form", _tag("The cat sat on the mat."), "the cat sat on the mat", 1.0, None),
    ("free-form", _tag("dogs run fast"), "the cat sat", 0.0, None),
    ("free-form", _tag("running dogs"), "run dog", 1.0, None),  # Porter stemming
    # rouge1 3/4 (the, cat, run), rouge2 1/3 (the cat), rougeL 3/4 (LCS: the cat run), each F = P = R
    ("free-form", _tag("the cats are running"), "the cat is running", (0.75 + 1 / 3 + 0.75) / 3, None),
    ("free-form", _tag("anything"), "。", 0.0, "ground_truth_without_rouge_tokens"),
    ("free-form", _tag(""), "the cat", 0.0, "empty_answer"),
    ("regression", _tag("10"), "<answer>10</answer>", 1.0, None),  # exact: 1 (project choice, see the module)
    ("regression", _tag("15"), "10", _regression(15, 10), None),  # 50 % off: 0.5 up to Video-R1's 1e-9
    ("regression", _tag("5"), "10", _regression(5, 10), None),
    ("regression", _tag("-2"), "-4", _regression(-2, -4), None),
    ("regression", _tag("30"), "10", 0.0, None),  # 200 % off, clipped
    ("regression", _tag("0"), "0", 1.0, None),  # gt = 0 answered exactly (Video-R1's formula gives 0)
    ("regression", _tag("0.5"), "0", 0.0, None),  # gt = 0: any miss is an infinite relative error
    ("regression", _tag("1,000"), "1000", 1.0, None),
    ("regression", _tag("about ten"), "10", 0.0, "not_a_number"),
    ("regression", _tag("10"), "ten", 0.0, "ground_truth_not_a_number"),
]


@pytest.mark.parametrize(("problem_type", "response", "truth", "score", "reason"), TABLE)
def test_reward_table(problem_type, response, truth, score, reason):
    assert problem_type_accuracy(response, truth, problem_type) == Score(score, reason)


def test_the_table_covers_every_problem_type():
    assert {row[0] for row in TABLE} == set(PROBLEM_TYPES)


def test_regression_half_off_is_half_up_to_the_epsilon():
    value = problem_type_accuracy(_tag("15"), "10", "regression").value
    assert value == pytest.approx(0.5, abs=1e-9) and value < 0.5


@pytest.mark.parametrize(("response", "truth", "problem_type", "reason"), [
    (_tag("B"), "B", "essay", "unknown_problem_type"),
    (_tag("B"), "", "multiple choice", "empty_ground_truth"),
    (_tag("B"), "<answer> </answer>", "multiple choice", "empty_ground_truth"),
    (_tag("12"), 12, "numerical", "ground_truth_not_a_string"),
    (None, "B", "multiple choice", "not_a_string"),
    (b"<answer>B</answer>", "B", "multiple choice", "not_a_string"),
])
def test_what_cannot_be_scored_scores_zero_with_its_reason(response, truth, problem_type, reason):
    assert problem_type_accuracy(response, truth, problem_type) == Score(0.0, reason)


def test_option_letter_forms():
    for text in ("B", "b", "(B)", "[b]", "B.", "B)", "B:", "Option B", "answer: (B)", "B. red car", "(B) red car",
                 "B) red car", "B: 3.5 m"):
        assert option_letter(text) == "B", text
    for text in ("red car", "B red car", "BC", "B.C", "", "12"):
        assert option_letter(text) is None, text


def test_strip_answer_tags_leaves_untagged_text_alone():
    assert strip_answer_tags("<answer>B</answer>") == "B"
    assert strip_answer_tags(" <answer> 3.5 </answer>\n") == "3.5"
    assert strip_answer_tags("<answer>B") == "B"  # a stray opening tag
    assert strip_answer_tags("  red car ") == "  red car "  # untouched: the exact rule scores it as before
    assert strip_answer_tags(None) is None


def test_parse_number():
    assert parse_number("1,234.5") == 1234.5
    assert parse_number(" -3 ") == -3.0
    assert parse_number("1e3") == 1000.0
    for text in ("", "twelve", "12 apples", "nan", "inf", "-infinity"):
        assert parse_number(text) is None, text
