"""Question types and :func:`ask`: question, answer, ground-truth regions and rationale, computed from a scene.

:func:`ask` is the single source of truth for answers: the generator plants a scene for a question type, then asks
it here, and hand-built scenes can be asked the same way. Each question type has one ``_ask_*`` function and an
entry in :data:`_QUESTIONS` that also says whether it is asked about an image or a video.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .scene import Scene, SceneObject, cell_phrase

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")


@dataclass
class QA:
    qtype: str
    question: str
    answer: str
    regions: list[list[int]]
    rationale: str
    params: dict = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------------- image questions


def _object_at(scene: Scene, params: dict, qtype: str) -> tuple[SceneObject, list[int], str]:
    row, col = (int(v) for v in params["cell"])
    o = _one([o for o in _qobjs(scene) if scene.cell_of(o) == (row, col)], qtype)
    return o, [row, col], cell_phrase(row, col, scene.grid)


def _ask_color_at(scene: Scene, params: dict) -> QA:
    o, cell, where = _object_at(scene, params, "color_at")
    return QA("color_at", f"What colour is the object in {where}?", o.color, [_region(0, o)],
              f"The object in {where} is {_article(o.color)} {o.color} {o.shape}.", {"cell": cell})


def _ask_shape_at(scene: Scene, params: dict) -> QA:
    o, cell, where = _object_at(scene, params, "shape_at")
    return QA("shape_at", f"What shape is the object in {where}?", o.shape, [_region(0, o)],
              f"The object in {where} is {_article(o.color)} {o.color} {o.shape}.", {"cell": cell})


def _ask_color_of_shape(scene: Scene, params: dict) -> QA:
    shape = params["shape"]
    o = _one([o for o in scene.objects if o.shape == shape], "color_of_shape")
    if o.distractor:
        raise ValueError("color_of_shape: the object is a distractor")
    return QA("color_of_shape", f"What colour is the {shape}?", o.color, [_region(0, o)],
              f"The {shape} is {o.color}.", {"shape": shape})


def _ask_count_color(scene: Scene, params: dict) -> QA:
    color = params["color"]
    objs = [o for o in _qobjs(scene) if o.color == color]
    if not objs:
        raise ValueError("count_color: no object of that colour (empty regions only for 'no')")
    k = len(objs)
    names = _and_list([f"{_article(o.shape)} {o.shape}" for o in objs])
    r = f"There {'is' if k == 1 else 'are'} {k} {color} object{'' if k == 1 else 's'}: {names}."
    return QA("count_color", f"How many {color} objects are there?", str(k), [_region(0, o) for o in objs], r,
              {"color": color})


def _ask_exists(scene: Scene, params: dict) -> QA:
    color, shape = params["color"], params["shape"]
    objs = [o for o in _qobjs(scene) if o.color == color and o.shape == shape]
    q = f"Is there {_article(color)} {color} {shape}?"
    if objs:
        if len(objs) == 1:
            where = cell_phrase(*scene.cell_of(objs[0]), scene.grid)
            r = f"There is {_article(color)} {color} {shape} in {where}."
        else:
            r = f"There are {len(objs)} {color} {shape}s."
        return QA("exists", q, "yes", [_region(0, o) for o in objs], r, {"color": color, "shape": shape})
    return QA("exists", q, "no", [], f"There is no {color} {shape}.", {"color": color, "shape": shape})


_PHRASE = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
_COMPARATIVE = {"left": "further left", "right": "further right", "above": "higher", "below": "lower"}


def _ask_relative(scene: Scene, params: dict) -> QA:
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
    # true relation of a to b on the asked axis (box coordinates: x at 0/2, y at 1/3)
    if relation in ("left", "right"):
        lo, hi, first, second = 0, 2, "left", "right"
    else:
        lo, hi, first, second = 1, 3, "above", "below"
    if a.box[hi] <= b.box[lo]:
        true_rel = first
    elif b.box[hi] <= a.box[lo]:
        true_rel = second
    else:
        raise ValueError("relative: the objects overlap on that axis")
    if form == "yesno":
        q = f"Is the {a.color} object {_PHRASE[relation]} the {b.color} object?"
        ans = "yes" if true_rel == relation else "no"
        r = f"The {a.color} {a.shape} is {_PHRASE[true_rel]} the {b.color} {b.shape}."
    else:
        q = f"Which is {_COMPARATIVE[relation]}, the {a.shape} or the {b.shape}?"
        winner, loser = (a, b) if true_rel == relation else (b, a)
        ans = winner.shape
        r = f"The {winner.shape} is {_PHRASE[relation]} the {loser.shape}."
    return QA("relative", q, ans, [_region(0, a), _region(0, b)], r,
              {"form": form, "relation": relation, "a": a_key, "b": b_key})


# ---------------------------------------------------------------------------------------------- video questions


def _ask_direction(scene: Scene, params: dict) -> QA:
    color, shape = params["color"], params["shape"]
    track = _track_by(scene, "direction", lambda o: o.color == color and o.shape == shape)
    present = [(f, o) for f, o in enumerate(track) if o is not None]
    o0, o1 = present[0][1], present[-1][1]
    dx, dy = o1.center[0] - o0.center[0], o1.center[1] - o0.center[1]
    if abs(dx) == abs(dy):  # includes no motion
        raise ValueError("direction: no dominant motion")
    ans = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    r = (f"The {color} {shape} moves from {cell_phrase(*scene.cell_of(o0), scene.grid)} "
         f"to {cell_phrase(*scene.cell_of(o1), scene.grid)}.")
    return QA("direction", f"Which way does the {color} {shape} move?", ans, [_region(f, o) for f, o in present], r,
              {"color": color, "shape": shape})


def _ask_appear_frame(scene: Scene, params: dict) -> QA:
    shape = params["shape"]
    track = _track_by(scene, "appear_frame", lambda o: o.shape == shape)
    first = next(f for f, o in enumerate(track) if o is not None)
    # the place is watched in every frame: before it appears, its box marks where it will be
    regions = [[f, *(o.box if o is not None else track[first].box)] for f, o in enumerate(track)]
    return QA("appear_frame", f"In which frame does the {shape} first appear?", str(first + 1), regions,
              f"The {shape} first appears in frame {first + 1}.", {"shape": shape})


def _ask_color_change(scene: Scene, params: dict) -> QA:
    shape = params["shape"]
    track = _track_by(scene, "color_change", lambda o: o.shape == shape)
    present = [(f, o) for f, o in enumerate(track) if o is not None]
    c0, c1 = present[0][1].color, present[-1][1].color
    if c0 == c1:
        raise ValueError("color_change: the colour does not change")
    return QA("color_change", f"What colour does the {shape} turn into?", c1, [_region(f, o) for f, o in present],
              f"The {shape} changes from {c0} to {c1}.", {"shape": shape})


# ---------------------------------------------------------------------------------------------- dispatch

#: qtype -> (kind of scene it is asked about, function). IMAGE_QTYPES and VIDEO_QTYPES keep this order, and the
#: generator's weighted draw depends on it (same seed, same samples): append new types, never reorder.
_QUESTIONS: dict[str, tuple[str, Callable[[Scene, dict], QA]]] = {
    "color_at": ("image", _ask_color_at),
    "shape_at": ("image", _ask_shape_at),
    "color_of_shape": ("image", _ask_color_of_shape),
    "count_color": ("image", _ask_count_color),
    "exists": ("image", _ask_exists),
    "relative": ("image", _ask_relative),
    "direction": ("video", _ask_direction),
    "appear_frame": ("video", _ask_appear_frame),
    "color_change": ("video", _ask_color_change),
}

IMAGE_QTYPES: tuple[str, ...] = tuple(q for q, (kind, _) in _QUESTIONS.items() if kind == "image")
VIDEO_QTYPES: tuple[str, ...] = tuple(q for q, (kind, _) in _QUESTIONS.items() if kind == "video")
QTYPES: tuple[str, ...] = IMAGE_QTYPES + VIDEO_QTYPES


def ask(scene: Scene, qtype: str, **params: Any) -> QA:
    """Question, answer, regions and rationale for ``qtype`` about a given target in ``scene``.

    Parameters per qtype: ``color_at``/``shape_at``: ``cell=(row, col)``; ``color_of_shape``: ``shape``;
    ``count_color``: ``color``; ``exists``: ``color, shape``; ``relative``: ``form`` ("yesno": ``a, b`` colours;
    "which": ``a, b`` shapes), ``relation`` in left/right/above/below; ``direction``: ``color, shape``;
    ``appear_frame``/``color_change``: ``shape``. Raises ``ValueError`` for an unknown qtype, a scene of the wrong
    kind (image/video), or a question that would be ambiguous.
    """
    if qtype not in _QUESTIONS:
        raise ValueError(f"unknown qtype {qtype!r}")
    kind, asker = _QUESTIONS[qtype]
    if scene.is_video != (kind == "video"):
        raise ValueError(f"{qtype} is {'a video' if kind == 'video' else 'an image'} question")
    return asker(scene, params)
