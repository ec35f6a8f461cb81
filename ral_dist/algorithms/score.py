"""The result type of every reward term, and the guard that keeps reward terms from raising."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple


class Score(NamedTuple):
    """value in [0, 1]; reason is None when the term was computed, else why it scored 0 (to be counted)."""

    value: float
    reason: str | None = None


def never_raises(fn: Callable[..., Score]) -> Callable[..., Score]:
    """A reward that cannot be computed scores 0 with a reason; it must never crash a reward worker."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs) -> Score:
        try:
            score = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure is a 0 score, by contract (RAL.md §4)
            return Score(0.0, f"error_{type(e).__name__}")
        if not math.isfinite(score.value):
            return Score(0.0, "non_finite_score")
        return Score(float(score.value), score.reason)

    return wrapper
