"""The generator's settings (:class:`GroundedVQAConfig`) and the curriculum of question-type weights."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .questions import QTYPES

#: Curriculum stages: qtype weights, easy location-named types first.
CURRICULUM: list[dict[str, float]] = [
    {"color_at": 1.0},
    {"color_at": 0.6, "shape_at": 0.4},
    {"color_at": 0.35, "shape_at": 0.25, "color_of_shape": 0.2, "exists": 0.2},
    {"color_at": 0.2, "shape_at": 0.15, "color_of_shape": 0.15, "exists": 0.15, "count_color": 0.15,
     "relative": 0.2},
    {"color_at": 0.15, "shape_at": 0.1, "color_of_shape": 0.1, "exists": 0.1, "count_color": 0.1,
     "relative": 0.15, "direction": 0.1, "appear_frame": 0.1, "color_change": 0.1},
]


class GroundedVQAConfig(BaseModel):
    """Generator settings. ``qtype_weights`` pick the question type; with ``fraction_video`` set, the kind
    (image/video) is drawn first with that probability and the type then by the weights of that kind (uniform
    over the kind's types when they all weigh 0)."""

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    canvas: int = Field(112, ge=32, le=1024)
    grid: int = Field(2, ge=2, le=4)
    qtype_weights: dict[str, float] = Field(default_factory=lambda: dict(CURRICULUM[0]))
    fraction_video: float | None = Field(None, ge=0.0, le=1.0)
    video_frames: int = Field(4, ge=2, le=16)
    min_objects: int = Field(2, ge=1)
    max_objects: int | None = None  # default: every cell may hold an object
    n_distractors: int = Field(0, ge=0)
    background: Literal["plain", "noise", "mixed"] = "plain"
    noise_amp: int = Field(12, ge=0, le=60)
    object_scale: tuple[float, float] = (0.55, 0.85)  # object side / cell side less its 1 px margins
    distractor_scale: tuple[float, float] = (0.3, 0.45)
    split_fractions: dict[str, float] = Field(
        default_factory=lambda: {"train": 0.8, "val": 0.1, "test": 0.1})

    @model_validator(mode="after")
    def _check(self) -> GroundedVQAConfig:
        unknown = set(self.qtype_weights) - set(QTYPES)
        if unknown:
            raise ValueError(f"unknown qtypes {sorted(unknown)}; known: {QTYPES}")
        if any(w < 0 for w in self.qtype_weights.values()):
            raise ValueError("qtype weights must be >= 0")
        if self.fraction_video is None and sum(self.qtype_weights.values()) <= 0:
            raise ValueError("at least one qtype weight must be > 0")
        if self.canvas // self.grid < 14:
            raise ValueError(f"cells of {self.canvas // self.grid} px are too small (canvas/grid >= 14)")
        cells = self.grid * self.grid
        mx = cells if self.max_objects is None else self.max_objects
        if not (1 <= self.min_objects <= mx <= cells):
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {cells}")
        for name, (lo, hi) in (("object_scale", self.object_scale), ("distractor_scale", self.distractor_scale)):
            if not (0.1 <= lo <= hi <= 1.0):
                raise ValueError(f"{name} must satisfy 0.1 <= lo <= hi <= 1")
        if not self.split_fractions or any(v < 0 for v in self.split_fractions.values()) \
                or sum(self.split_fractions.values()) <= 0:
            raise ValueError("split_fractions must be non-negative with a positive sum")
        return self

    @property
    def n_max_objects(self) -> int:
        return self.grid * self.grid if self.max_objects is None else self.max_objects

    @classmethod
    def at_stage(cls, stage: int, **overrides: Any) -> GroundedVQAConfig:
        """Config for curriculum stage ``stage`` (clamped to the last stage); ``overrides`` win."""
        weights = dict(CURRICULUM[max(0, min(stage, len(CURRICULUM) - 1))])
        return cls(**{"qtype_weights": weights, **overrides})
