"""Planting: draw a scene built for one question type, with the target the question will ask about.

:func:`plant` returns the scene and the :func:`~ral_dist.data.questions.ask` parameters of its target. Planters draw
the target and its attributes (colour, shape, count, yes/no, relation, direction, event frame) at random, so answers
are balanced. Every draw comes from the one ``rng`` passed in, in a fixed order, so the same rng state gives the same
scene (and the generator's samples are reproducible).
"""

from __future__ import annotations

import dataclasses
import random

from .questions import DIRECTIONS, RELATIONS
from .scene import COLORS, SHAPES, Scene, SceneObject, box_in_cell, min_cell_side
from .vqa_config import GroundedVQAConfig


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
    """Draw a scene planted for ``qtype`` and the :func:`~ral_dist.data.questions.ask` parameters of its target."""
    b = _Builder(rng, config)
    frames, params = _PLANTERS[qtype](b)
    return b.scene(frames), params
