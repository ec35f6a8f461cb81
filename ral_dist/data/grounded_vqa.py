"""Synthetic grounded VQA: questions whose answer depends on *where* the model looks.

Every question names or implies the objects that decide it, and their boxes are the ground-truth ``regions``.
Scenes are planted per question type (the answer is chosen first, so answers are balanced), and the answer is then
computed from the scene by :func:`ask` — the single source of truth, also usable on hand-built scenes.

Splits: ``layout_key`` hashes the semantic layout (grid, objects' cells, shapes, colours, per frame); each key maps
to exactly one split by its hash bucket, and a split's generator keeps only candidates of its own bucket. So a
layout (and any (layout, question) pair) never appears in two splits. ``generate(config, split, n)`` is
deterministic for (config, split, n) and ``generate(.., n)`` is a prefix of ``generate(.., n + k)``.

Curriculum: :data:`CURRICULUM` lists qtype weights from the easy location-named types (``color_at``) up to all
types; :meth:`GroundedVQAConfig.at_stage` builds a config for a stage.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .sample import Sample
from .scene import (
    COLORS,
    SHAPES,
    Scene,
    SceneObject,
    box_in_cell,
    cell_phrase,
    min_cell_side,
    render_scene,
)

IMAGE_QTYPES: tuple[str, ...] = ("color_at", "shape_at", "color_of_shape", "count_color", "exists", "relative")
VIDEO_QTYPES: tuple[str, ...] = ("direction", "appear_frame", "color_change")
QTYPES: tuple[str, ...] = IMAGE_QTYPES + VIDEO_QTYPES
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")

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

_SPLIT_BUCKETS = 10_000
_MAX_ATTEMPTS_PER_SAMPLE = 200_000


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
    object_scale: tuple[float, float] = (0.55, 0.85)  # object side / cell side
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


@dataclass
class QA:
    qtype: str
    question: str
    answer: str
    regions: list[list[int]]
    rationale: str
    params: dict = field(default_factory=dict)


# ============================================================================================== questions


def _qobjs(scene: Scene, frame: int = 0) -> list[SceneObject]:
    return [o for o in scene.frames[frame] if not o.distractor]


def _one(objs: list[SceneObject], what: str) -> SceneObject:
    if len(objs) != 1:
        raise ValueError(f"{what}: expected exactly one object, found {len(objs)}")
    return objs[0]


def _region(frame: int, o: SceneObject) -> list[int]:
    return [frame, *o.box]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _and_list(words: list[str]) -> str:
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " and " + words[-1]


def _tracks(scene: Scene) -> dict[int, list[SceneObject | None]]:
    out: dict[int, list[SceneObject | None]] = {}
    for f, objs in enumerate(scene.frames):
        for o in objs:
            out.setdefault(o.oid, [None] * scene.n_frames)[f] = o
    return out


def _track_by(scene: Scene, what: str, pred) -> list[SceneObject | None]:
    found = [t for t in _tracks(scene).values() if any(o is not None and pred(o) for o in t)]
    if len(found) != 1:
        raise ValueError(f"{what}: expected exactly one object track, found {len(found)}")
    track = found[0]
    if any(o is not None and o.distractor for o in track):
        raise ValueError(f"{what}: the object is a distractor")
    return track


def _need_image(scene: Scene, qtype: str) -> None:
    if scene.is_video:
        raise ValueError(f"{qtype} is an image question")


def _need_video(scene: Scene, qtype: str) -> None:
    if not scene.is_video:
        raise ValueError(f"{qtype} is a video question")


def ask(scene: Scene, qtype: str, **params: Any) -> QA:
    """Question, answer, regions and rationale for ``qtype`` about a given target in ``scene``.

    Parameters per qtype: ``color_at``/``shape_at``: ``cell=(row, col)``; ``color_of_shape``: ``shape``;
    ``count_color``: ``color``; ``exists``: ``color, shape``; ``relative``: ``form`` ("yesno": ``a, b`` colours;
    "which": ``a, b`` shapes), ``relation`` in left/right/above/below; ``direction``: ``color, shape``;
    ``appear_frame``/``color_change``: ``shape``. Raises ``ValueError`` when the question would be ambiguous.
    """
    g = scene.grid
    if qtype in ("color_at", "shape_at"):
        _need_image(scene, qtype)
        row, col = (int(v) for v in params["cell"])
        o = _one([o for o in _qobjs(scene) if scene.cell_of(o) == (row, col)], qtype)
        where = cell_phrase(row, col, g)
        if qtype == "color_at":
            q, a = f"What colour is the object in {where}?", o.color
        else:
            q, a = f"What shape is the object in {where}?", o.shape
        r = f"The object in {where} is {_article(o.color)} {o.color} {o.shape}."
        return QA(qtype, q, a, [_region(0, o)], r, {"cell": [row, col]})

    if qtype == "color_of_shape":
        _need_image(scene, qtype)
        shape = params["shape"]
        o = _one([o for o in scene.objects if o.shape == shape], qtype)
        if o.distractor:
            raise ValueError("color_of_shape: the object is a distractor")
        return QA(qtype, f"What colour is the {shape}?", o.color, [_region(0, o)],
                  f"The {shape} is {o.color}.", {"shape": shape})

    if qtype == "count_color":
        _need_image(scene, qtype)
        color = params["color"]
        objs = [o for o in _qobjs(scene) if o.color == color]
        if not objs:
            raise ValueError("count_color: no object of that colour (empty regions only for 'no')")
        k = len(objs)
        names = _and_list([f"{_article(o.shape)} {o.shape}" for o in objs])
        r = f"There {'is' if k == 1 else 'are'} {k} {color} object{'' if k == 1 else 's'}: {names}."
        return QA(qtype, f"How many {color} objects are there?", str(k), [_region(0, o) for o in objs], r,
                  {"color": color})

    if qtype == "exists":
        _need_image(scene, qtype)
        color, shape = params["color"], params["shape"]
        objs = [o for o in _qobjs(scene) if o.color == color and o.shape == shape]
        q = f"Is there {_article(color)} {color} {shape}?"
        if objs:
            if len(objs) == 1:
                r = f"There is {_article(color)} {color} {shape} in {cell_phrase(*scene.cell_of(objs[0]), g)}."
            else:
                r = f"There are {len(objs)} {color} {shape}s."
            return QA(qtype, q, "yes", [_region(0, o) for o in objs], r, {"color": color, "shape": shape})
        return QA(qtype, q, "no", [], f"There is no {color} {shape}.", {"color": color, "shape": shape})

    if qtype == "relative":
        _need_image(scene, qtype)
        form, relation, a_key, b_key = params["form"], params["relation"], params["a"], params["b"]
        if relation not in RELATIONS:
            raise ValueError(f"relation must be one of {RELATIONS}")
        attr = "color" if form == "yesno" else "shape"
        if form not in ("yesno", "which"):
            raise ValueError("form must be 'yesno' or 'which'")
        pool = _qobjs(scene) if form == "yesno" else scene.objects
        a = _one([o for o in pool if getattr(o, attr) == a_key], f"relative {a_key}")
        b = _one([o for o in pool if getattr(o, attr) == b_key], f"relative {b_key}")
        if a.distractor or b.distractor or a is b:
            raise ValueError("relative: bad objects")
        # true relation of a to b on the asked axis
        if relation in ("left", "right"):
            lo, hi = (0, 2)
            first, second = ("left", "right")
        else:
            lo, hi = (1, 3)
            first, second = ("above", "below")
        if a.box[hi] <= b.box[lo]:
            true_rel = first
        elif b.box[hi] <= a.box[lo]:
            true_rel = second
        else:
            raise ValueError("relative: the objects overlap on that axis")
        phr = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
        if form == "yesno":
            q = f"Is the {a.color} object {phr[relation]} the {b.color} object?"
            ans = "yes" if true_rel == relation else "no"
            r = f"The {a.color} {a.shape} is {phr[true_rel]} the {b.color} {b.shape}."
        else:
            adj = {"left": "further left", "right": "further right", "above": "higher", "below": "lower"}
            q = f"Which is {adj[relation]}, the {a.shape} or the {b.shape}?"
            winner, loser = (a, b) if true_rel == relation else (b, a)
            ans = winner.shape
            r = f"The {winner.shape} is {phr[relation]} the {loser.shape}."
        return QA(qtype, q, ans, [_region(0, a), _region(0, b)], r,
                  {"form": form, "relation": relation, "a": a_key, "b": b_key})

    if qtype == "direction":
        _need_video(scene, qtype)
        color, shape = params["color"], params["shape"]
        track = _track_by(scene, qtype, lambda o: o.color == color and o.shape == shape)
        present = [(f, o) for f, o in enumerate(track) if o is not None]
        o0, o1 = present[0][1], present[-1][1]
        dx, dy = o1.center[0] - o0.center[0], o1.center[1] - o0.center[1]
        if abs(dx) == abs(dy):  # includes no motion
            raise ValueError("direction: no dominant motion")
        ans = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        r = (f"The {color} {shape} moves from {cell_phrase(*scene.cell_of(o0), scene.grid)} "
             f"to {cell_phrase(*scene.cell_of(o1), scene.grid)}.")
        return QA(qtype, f"Which way does the {color} {shape} move?", ans, [_region(f, o) for f, o in present], r,
                  {"color": color, "shape": shape})

    if qtype == "appear_frame":
        _need_video(scene, qtype)
        shape = params["shape"]
        track = _track_by(scene, qtype, lambda o: o.shape == shape)
        first = next(f for f, o in enumerate(track) if o is not None)
        # the place is watched in every frame: before it appears, its box marks where it will be
        regions = [[f, *(o.box if o is not None else track[first].box)] for f, o in enumerate(track)]
        return QA(qtype, f"In which frame does the {shape} first appear?", str(first + 1), regions,
                  f"The {shape} first appears in frame {first + 1}.", {"shape": shape})

    if qtype == "color_change":
        _need_video(scene, qtype)
        shape = params["shape"]
        track = _track_by(scene, qtype, lambda o: o.shape == shape)
        present = [(f, o) for f, o in enumerate(track) if o is not None]
        c0, c1 = present[0][1].color, present[-1][1].color
        if c0 == c1:
            raise ValueError("color_change: the colour does not change")
        return QA(qtype, f"What colour does the {shape} turn into?", c1, [_region(f, o) for f, o in present],
                  f"The {shape} changes from {c0} to {c1}.", {"shape": shape})

    raise ValueError(f"unknown qtype {qtype!r}")


# ============================================================================================== planting


class _Builder:
    """Helpers bound to one rng and config."""

    def __init__(self, rng: random.Random, cfg: GroundedVQAConfig) -> None:
        self.rng, self.cfg = rng, cfg
        self.cells = [(r, c) for r in range(cfg.grid) for c in range(cfg.grid)]
        self.next_oid = 0

    def n_objects(self, available: int, at_least: int = 1) -> int:
        hi = min(self.cfg.n_max_objects, available)
        lo = min(max(self.cfg.min_objects, at_least), hi)
        return self.rng.randint(lo, hi)

    def geometry(self, distractor: bool = False) -> tuple[int, float, float]:
        lo, hi = self.cfg.distractor_scale if distractor else self.cfg.object_scale
        side = min_cell_side(self.cfg.canvas, self.cfg.grid)
        size = max(6, int(round(side * self.rng.uniform(lo, hi))))
        return size, self.rng.random(), self.rng.random()

    def obj(self, cell: tuple[int, int], shape: str, color: str, distractor: bool = False) -> SceneObject:
        size, fx, fy = self.geometry(distractor)
        box = box_in_cell(self.cfg.canvas, self.cfg.grid, cell[0], cell[1], size, fx, fy)
        o = SceneObject(shape, color, box, oid=self.next_oid, distractor=distractor)
        self.next_oid += 1
        return o

    def shape(self, avoid: tuple[str, ...] = ()) -> str:
        return self.rng.choice([s for s in SHAPES if s not in avoid])

    def color(self, avoid: tuple[str, ...] = ()) -> str:
        return self.rng.choice([c for c in COLORS if c not in avoid])

    def distractors(self, free_cells: list[tuple[int, int]], avoid_shapes: tuple[str, ...] = ()
                    ) -> list[SceneObject]:
        k = min(self.cfg.n_distractors, len(free_cells))
        return [self.obj(c, self.shape(avoid_shapes), "gray", distractor=True)
                for c in self.rng.sample(free_cells, k)]

    def scene(self, frames: list[list[SceneObject]]) -> Scene:
        bg = self.cfg.background
        if bg == "mixed":
            bg = self.rng.choice(["plain", "noise"])
        return Scene(canvas=self.cfg.canvas, grid=self.cfg.grid, frames=frames, background=bg,
                     noise_amp=self.cfg.noise_amp, noise_seed=self.rng.getrandbits(32))

    def static_video(self, objs: list[SceneObject]) -> list[list[SceneObject]]:
        return [[dataclasses.replace(o) for o in objs] for _ in range(self.cfg.video_frames)]


def _plant_cell(b: _Builder) -> tuple[list[list[SceneObject]], dict]:
    chosen = b.rng.sample(b.cells, b.n_objects(len(b.cells)))
    objs = [b.obj(c, b.shape(), b.color()) for c in chosen]
    objs += b.distractors([c for c in b.cells if c not in chosen])
    return [objs], {"cell": list(b.rng.choice(chosen))}


def _plant_color_of_shape(b: _Builder) -> tuple[list[list[SceneObject]], dict]:
    chosen = b.rng.sample(b.cells, b.n_objects(len(b.cells)))
    s = b.shape()
    objs = [b.obj(chosen[0], s, b.color())] + [b.obj(c, b.shape((s,)), b.color()) for c in chosen[1:]]
    objs += b.distractors([c for c in b.cells if c not in chosen], (s,))
    b.rng.shuffle(objs)
    return [objs], {"shape": s}


def _plant_count_color(b: _Builder) -> tuple[list[list[SceneObject]], dict]:
    chosen = b.rng.sample(b.cells, b.n_objects(len(b.cells)))
    c = b.color()
    k = b.rng.randint(1, len(chosen))
    objs = [b.obj(cell, b.shape(), c if i < k else b.color((c,))) for i, cell in enumerate(chosen)]
    objs += b.distractors([x for x in b.cells if x not in chosen])
    return [objs], {"color": c}


def _plant_exists(b: _Builder) -> tuple[list[list[SceneObject]], dict]:
    chosen = b.rng.sample(b.cells, b.n_objects(len(b.cells)))
    c, s = b.color(), b.shape()
    yes = b.rng.random() < 0.5
    objs = []
    for i, cell in enumerate(chosen):
        if yes and i == 0:
            objs.append(b.obj(cell, s, c))
        elif not yes and i == 0:  # hard negatives: the colour and the shape are there, not bound together
            objs.append(b.obj(cell, b.shape((s,)), c))
        elif not yes and i == 1:
            objs.append(b.obj(cell, s, b.color((c,))))
        else:
            sh, co = b.shape(), b.color()
            while (sh, co) == (s, c):
                sh, co = b.shape(), b.color()
            objs.append(b.obj(cell, sh, co))
    objs += b.distractors([x for x in b.cells if x not in chosen])
    b.rng.shuffle(objs)
    return [objs], {"color": c, "shape": s}


def _plant_relative(b: _Builder) -> tuple[list[list[SceneObject]], dict]:
    form = b.rng.choice(["yesno", "which"])
    relation = b.rng.choice(RELATIONS)
    axis = 1 if relation in ("left", "right") else 0  # cells must differ in column / row
    pairs = [(p, q) for p in b.cells for q in b.cells if p[axis] != q[axis]]
    ca, cb = b.rng.choice(pairs)
    rest = [x for x in b.cells if x not in (ca, cb)]
    others = b.rng.sample(rest, max(0, b.n_objects(len(b.cells), at_least=2) - 2))
    if form == "yesno":
        col_a, col_b = b.rng.sample(list(COLORS), 2)
        objs = [b.obj(ca, b.shape(), col_a), b.obj(cb, b.shape(), col_b)]
        objs += [b.obj(x, b.shape(), b.color((col_a, col_b))) for x in others]
        avoid: tuple[str, ...] = ()
        params = {"form": form, "relation": relation, "a": col_a, "b": col_b}
    else:
        sa, sb = b.rng.sample(list(SHAPES), 2)
        objs = [b.obj(ca, sa, b.color()), b.obj(cb, sb, b.color())]
        objs += [b.obj(x, b.shape((sa, sb)), b.color()) for x in others]
        avoid = (sa, sb)
        params = {"form": form, "relation": relation, "a": sa, "b": sb}
    objs += b.distractors([x for x in rest if x not in others], avoid)
    return [objs], params


def _plant_direction(b: _Builder) -> tuple[list[list[SceneObject]], dict]:
    cfg, g, n = b.cfg, b.cfg.grid, b.cfg.video_frames
    d = b.rng.choice(DIRECTIONS)
    line = b.rng.randrange(g)
    if d in ("left", "right"):
        path = [(line, c) for c in range(g)]
    else:
        path = [(r, line) for r in range(g)]
    if d in ("left", "up"):
        path = path[::-1]
    free = [x for x in b.cells if x not in path]
    others = b.rng.sample(free, b.n_objects(len(free) + 1) - 1)
    c, s = b.color(), b.shape()
    size, fx, fy = b.geometry()
    start = box_in_cell(cfg.canvas, g, *path[0], size, fx, fy)
    end = box_in_cell(cfg.canvas, g, *path[-1], size, fx, fy)
    static = []
    for x in others:
        sh, co = b.shape(), b.color()
        while (sh, co) == (s, c):
            sh, co = b.shape(), b.color()
        static.append(b.obj(x, sh, co))
    static += b.distractors([x for x in free if x not in others])
    oid = b.next_oid
    b.next_oid += 1
    frames = b.static_video(static)
    for f in range(n):
        t = f / (n - 1)
        x0 = int(round(start[0] + t * (end[0] - start[0])))
        y0 = int(round(start[1] + t * (end[1] - start[1])))
        frames[f].insert(0, SceneObject(s, c, (x0, y0, x0 + size, y0 + size), oid=oid))
    return frames, {"color": c, "shape": s}


def _plant_appear_or_change(b: _Builder, change: bool) -> tuple[list[list[SceneObject]], dict]:
    n = b.cfg.video_frames
    chosen = b.rng.sample(b.cells, b.n_objects(len(b.cells)))
    s = b.shape()
    target = b.obj(chosen[0], s, b.color())
    static = [b.obj(x, b.shape((s,)), b.color()) for x in chosen[1:]]
    static += b.distractors([x for x in b.cells if x not in chosen], (s,))
    frames = b.static_video(static)
    k = b.rng.randint(1, n - 1)  # 0-based frame of the event
    new_color = b.color((target.color,))
    for f in range(n):
        if change:
            frames[f].append(dataclasses.replace(target, color=target.color if f < k else new_color))
        elif f >= k:
            frames[f].append(dataclasses.replace(target))
    return frames, {"shape": s}


_PLANTERS = {
    "color_at": _plant_cell,
    "shape_at": _plant_cell,
    "color_of_shape": _plant_color_of_shape,
    "count_color": _plant_count_color,
    "exists": _plant_exists,
    "relative": _plant_relative,
    "direction": _plant_direction,
    "appear_frame": lambda b: _plant_appear_or_change(b, change=False),
    "color_change": lambda b: _plant_appear_or_change(b, change=True),
}


def plant(rng: random.Random, config: GroundedVQAConfig, qtype: str) -> tuple[Scene, dict]:
    """Draw a scene planted for ``qtype`` and the :func:`ask` parameters of its target."""
    b = _Builder(rng, config)
    frames, params = _PLANTERS[qtype](b)
    return b.scene(frames), params


# ============================================================================================== splits and generation


def split_of_layout(layout_key: str, split_fractions: dict[str, float]) -> str:
    """The one split a layout belongs to (hash bucket against the cumulative fractions, in dict order)."""
    total = sum(split_fractions.values())
    u = (int(layout_key[:12], 16) % _SPLIT_BUCKETS + 0.5) / _SPLIT_BUCKETS
    acc = 0.0
    last = None
    for name, frac in split_fractions.items():
        if frac <= 0:
            continue
        acc += frac / total
        last = name
        if u < acc:
            return name
    return last  # rounding


def _pick_qtype(rng: random.Random, cfg: GroundedVQAConfig) -> str:
    w = cfg.qtype_weights
    if cfg.fraction_video is None:
        names = [q for q in QTYPES if w.get(q, 0.0) > 0]
        return rng.choices(names, weights=[w[q] for q in names])[0]
    kind_types = VIDEO_QTYPES if rng.random() < cfg.fraction_video else IMAGE_QTYPES
    weights = [w.get(q, 0.0) for q in kind_types]
    if sum(weights) <= 0:
        weights = [1.0] * len(kind_types)
    return rng.choices(kind_types, weights=weights)[0]


def sample_from_scene(scene: Scene, qa: QA, sample_id: str, split: str = "") -> Sample:
    """Render ``scene`` and wrap it with ``qa`` into a :class:`Sample`."""
    from .dataset_io import image_filename

    images = render_scene(scene)
    return Sample(
        id=sample_id,
        kind="video" if scene.is_video else "image",
        images=images,
        image_paths=[f"images/{image_filename(split, sample_id, k)}" for k in range(len(images))],
        question=qa.question,
        answer=qa.answer,
        qtype=qa.qtype,
        regions=[list(r) for r in qa.regions],
        rationale=qa.rationale,
        layout_key=scene.layout_key(),
        meta={"params": qa.params, "scene": scene.to_dict(), "split": split, "canvas": scene.canvas,
              "grid": scene.grid, "frame_hw": (scene.canvas, scene.canvas)},
    )


def iter_samples(config: GroundedVQAConfig, split: str) -> Iterator[Sample]:
    """Endless deterministic stream of samples of ``split`` (seeded from (config.seed, split) only)."""
    if config.split_fractions.get(split, 0.0) <= 0:
        raise ValueError(f"split {split!r} not in split_fractions {config.split_fractions} (or fraction 0)")
    rng = random.Random(f"ral_dist.grounded_vqa:{config.seed}:{split}")
    for i in itertools.count():
        for _ in range(_MAX_ATTEMPTS_PER_SAMPLE):
            qtype = _pick_qtype(rng, config)
            scene, params = plant(rng, config, qtype)
            if split_of_layout(scene.layout_key(), config.split_fractions) == split:
                break
        else:  # pragma: no cover
            raise RuntimeError(f"no layout of split {split!r} after {_MAX_ATTEMPTS_PER_SAMPLE} candidates")
        qa = ask(scene, qtype, **params)
        yield sample_from_scene(scene, qa, f"{split}-s{config.seed}-{i:06d}", split)


def generate(config: GroundedVQAConfig, split: str, n: int) -> list[Sample]:
    """``n`` samples of ``split``; deterministic for (config, split, n); a prefix of any larger ``n``."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return list(itertools.islice(iter_samples(config, split), n))
