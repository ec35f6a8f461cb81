import math

import pytest
import torch

from ral_dist.algorithms import (
    Score,
    consistency,
    exact_match,
    extract_answer,
    format_score,
    normalize_answer,
    sparsity,
)

GOOD = "<think>The bar for May is tallest.</think>\n<answer>(B)</answer>"


# --- answers -------------------------------------------------------------------------------------------


def test_extract_answer_takes_last_tag():
    assert extract_answer("<answer> 1 </answer> then <answer>\n2\n</answer>") == "2"
    assert extract_answer("no tags here") is None
    assert extract_answer("<answer></answer>") == ""
    assert extract_answer(None) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3.0", "3"),
        ("-2.50", "-2.5"),
        ("three", "3"),
        ("Twenty apples", "20 apples"),
        ("1,000", "1000"),
        ("1,000.50 dollars", "1000.5 dollars"),
        ("(B)", "b"),
        ("B.", "b"),
        ("B)", "b"),
        ("option b", "b"),
        ("  b ", "b"),
        ("(A)", "a"),
        ("(b) red car", "b"),
        ("The Cat.", "cat"),
        ("  Hello,   World! ", "hello world"),
        ("an apple", "apple"),
        ("x-ray", "x ray"),
        ("50%", "50"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_cases():
    assert exact_match(GOOD, "b") == Score(1.0, None)
    assert exact_match("<answer>three</answer>", "3") == Score(1.0, None)
    assert exact_match("<answer>3.0</answer>", "3") == Score(1.0, None)
    assert exact_match("<answer>The Eiffel Tower!</answer>", "eiffel tower") == Score(1.0, None)
    assert exact_match("<answer>4</answer>", "3") == Score(0.0, None)
    assert exact_match("<answer>c</answer>", "(B)") == Score(0.0, None)
    assert exact_match("the answer is 3", "3") == Score(0.0, "no_answer_tag")
    assert exact_match("<answer>  </answer>", "3") == Score(0.0, "empty_answer")
    assert exact_match("<answer>2</answer><answer>3</answer>", "3").value == 1.0
    assert exact_match("<answer>1,000</answer>", 1000).value == 1.0
    assert exact_match(None, "3") == Score(0.0, "not_a_string")


# --- format --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (GOOD, None),
        ("\n  <think>x</think><answer>y</answer>\n", None),
        ("<answer>y</answer>", "no_think_tag"),
        ("<think>x</think>", "no_answer_tag"),
        ("Sure! <think>x</think><answer>y</answer>", "text_outside_tags"),
        ("<think>x</think> so <answer>y</answer>", "text_outside_tags"),
        ("<think>x</think><answer>y</answer> done", "text_outside_tags"),
        ("<answer>y</answer><think>x</think>", "text_outside_tags"),
        ("<think>x</think><answer>y</answer><answer>z</answer>", "duplicate_tags"),
        ("<think>x<think>x</think><answer>y</answer>", "duplicate_tags"),
        ("<think>x</think><answer> </answer>", "empty_answer"),
        ("<think>\n</think><answer>y</answer>", "empty_think"),
    ],
)
def test_format_think_mode(response, reason):
    assert format_score(response) == Score(1.0 if reason is None else 0.0, reason)


def test_format_answer_only_mode():
    assert format_score(" <answer>5</answer>\n", "answer_only") == Score(1.0, None)
    assert format_score(GOOD, "answer_only") == Score(0.0, "unexpected_think_tag")
    assert format_score("x <answer>5</answer>", "answer_only") == Score(0.0, "text_outside_tags")
    assert format_score("<answer></answer>", "answer_only") == Score(0.0, "empty_answer")
    assert format_score("5", "answer_only") == Score(0.0, "no_answer_tag")
    assert format_score(GOOD, "bogus").value == 0.0
    assert format_score(42) == Score(0.0, "not_a_string")


# --- attention -----------------------------------------------------------------------------------------

VIS = torch.tensor([1, 2, 3, 4])  # 4 visual positions among K = 6 (0: text before, 5: text after)


def _row(*pairs: tuple[int, float]) -> list[float]:
    row = [0.0] * 6
    for pos, val in pairs:
        row[pos] = val
    return row


def test_sparsity_one_hot_is_one_uniform_is_zero():
    one_hot = torch.tensor([_row((2, 1.0)), _row((0, 0.5), (4, 0.5))])  # text mass is renormalised away
    assert sparsity(one_hot, VIS) == Score(1.0, None)
    uniform = torch.tensor([_row((1, 0.2), (2, 0.2), (3, 0.2), (4, 0.2), (5, 0.2))])
    s = sparsity(uniform, VIS)
    assert s.reason is None and s.value == pytest.approx(0.0, abs=1e-6)


def test_sparsity_hand_value_and_row_handling():
    half = torch.tensor([_row((1, 0.3), (2, 0.3), (0, 0.4))])  # q = (.5, .5, 0, 0): H = ln 2, |V| = 4
    assert sparsity(half, VIS).value == pytest.approx(0.5, abs=1e-6)
    mixed = torch.tensor([_row((3, 1.0)), _row((0, 0.6), (5, 0.4))])  # second row has no visual mass
    assert sparsity(mixed, VIS) == Score(1.0, None)
    two = torch.tensor([_row((3, 1.0)), _row((1, 0.25), (2, 0.25), (3, 0.25), (4, 0.25))])
    assert sparsity(two, VIS).value == pytest.approx(0.5, abs=1e-6)
    assert sparsity(two, VIS, row_mask=torch.tensor([True, False])) == Score(1.0, None)


@pytest.mark.parametrize(
    ("rows", "vis", "reason"),
    [
        ([_row((0, 1.0)), _row((5, 1.0))], VIS, "no_visual_mass"),
        ([_row((2, 1.0))], torch.tensor([], dtype=torch.long), "no_visual_tokens"),
        ([_row((2, 1.0))], torch.tensor([2, 2]), "single_visual_token"),
        ([_row((2, 1.0))], torch.tensor([1, 9]), "bad_visual_positions"),
        ([_row((2, float("nan")))], VIS, "nan_attention"),
        ([_row((2, float("inf")))], VIS, "nan_attention"),
        (None, VIS, "missing_attention"),
        ([0.5, 0.5], VIS, "bad_attention_shape"),
    ],
)
def test_sparsity_failures_score_zero_with_reason(rows, vis, reason):
    rows = None if rows is None else torch.tensor(rows)
    assert sparsity(rows, vis) == Score(0.0, reason)


def test_consistency_values():
    a = torch.tensor([_row((1, 1.0)), _row((0, 0.5), (2, 0.5))])  # mean q = (.5, .5, 0, 0)
    assert consistency(a, a.clone(), VIS) == Score(1.0, None)
    disjoint = consistency(torch.tensor([_row((1, 1.0))]), torch.tensor([_row((4, 1.0))]), VIS)
    assert disjoint.reason is None and disjoint.value == pytest.approx(0.0, abs=1e-6)
    # answer q = (1, 0, 0, 0), question q = (.5, .5, 0, 0), m = (.75, .25)
    expected_jsd = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    got = consistency(torch.tensor([_row((1, 1.0))]), a, VIS)
    assert got.value == pytest.approx(1 - expected_jsd / math.log(2), abs=1e-6)


def test_consistency_failures_never_raise():
    ok = torch.tensor([_row((1, 1.0))])
    nan = torch.tensor([_row((1, float("nan")))])
    assert consistency(nan, ok, VIS) == Score(0.0, "nan_attention")
    assert consistency(ok, nan, VIS) == Score(0.0, "nan_attention")
    assert consistency(ok, None, VIS) == Score(0.0, "missing_attention")
    assert consistency(ok, torch.zeros(0, 6), VIS) == Score(0.0, "no_rows")
    assert consistency(ok, torch.tensor([_row((0, 1.0))]), VIS) == Score(0.0, "no_visual_mass")
    garbage = sparsity("not a tensor", VIS)
    assert garbage.value == 0.0 and garbage.reason.startswith("error_")
