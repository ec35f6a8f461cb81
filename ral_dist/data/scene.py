"""Deterministic synthetic scenes drawn with Pillow.

A :class:`Scene` is a list of frames (one frame for an image), each frame a list of :class:`SceneObject`. Objects
sit in the cells of a ``grid x grid`` layout on a square ``canvas``; every object knows its bounding box
``(x0, y0, x1, y1)`` in pixels (x1/y1 exclusive). Distractors are small grey objects that no question asks about.
Rendering depends only on the scene (the background noise is drawn from ``noise_seed``), so the same scene always
gives the same pixels.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")

#: Question colours: well separated in RGB (and in hue).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 225),
    "yellow": (240, 210, 20),
    "purple": (140, 40, 180),
    "orange": (250, 130, 10),
}
DISTRACTOR_COLOR = "gray"
ALL_COLORS: dict[str, tuple[int, int, int]] = {**COLORS, DISTRACTOR_COLOR: (128, 128, 128)}
BACKGROUND_RGB: tuple[int, int, int] = (240, 240, 240)

Box = tuple[int, int, int, int]


@dataclass
class SceneObject:
    """One drawn object. ``oid`` identifies the same object across the frames of a video."""

    shape: str
    color: str
    box: Box
    oid: int = 0
    distractor: bool = False

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        if self.color not in ALL_COLORS:
            raise ValueError(f"unknown colour {self.color!r}")
        x0, y0, x1, y1 = (int(v) for v in self.box)
        if not (x0 < x1 and y0 < y1):
            raise ValueError(f"empty box {self.box}")
        self.box = (x0, y0, x1, y1)

    @property
    def center(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2.0, (y0 + y1) / 2.0)

    def to_dict(self) -> dict:
        return {"shape": self.shape, "color": self.color, "box": list(self.box), "oid": self.oid,
                "distractor": self.distractor}


@dataclass
class Scene:
    canvas: int
    grid: int
    frames: list[list[SceneObject]]
    background: str = "plain"  # "plain" | "noise"
    noise_amp: int = 12
    noise_seed: int = 0
    extra: dict = field(default_factory=dict)  # free-form, not part of the layout

    def __post_init__(self) -> None:
        if self.grid < 1 or self.canvas < self.grid:
            raise ValueError(f"bad canvas/grid {self.canvas}/{self.grid}")
        if not self.frames:
            raise ValueError("a scene needs at least one frame")
        if self.background not in ("plain", "noise"):
            raise ValueError(f"unknown background {self.background!r}")

    @classmethod
    def image(cls, canvas: int, grid: int, objects: list[SceneObject], **kw) -> Scene:
        return cls(canvas=canvas, grid=grid, frames=[list(objects)], **kw)

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def is_video(self) -> bool:
        return len(self.frames) > 1

    @property
    def objects(self) -> list[SceneObject]:
        """Objects of the first frame (all objects of an image)."""
        return self.frames[0]

    def cell_of(self, obj: SceneObject) -> tuple[int, int]:
        return cell_of_point(obj.center, self.canvas, self.grid)

    def layout_key(self) -> str:
        """Hash of the semantic layout: grid, frame count, and per object track its shape, distractor flag and
        per-frame (cell, colour) or absence. Pixel jitter, canvas size and background are not part of it."""
        tracks: dict[int, dict] = {}
        for f, objs in enumerate(self.frames):
            for o in objs:
                t = tracks.setdefault(o.oid, {"shape": o.shape, "d": o.distractor,
                                              "frames": [None] * self.n_frames})
                t["frames"][f] = [*self.cell_of(o), o.color]
        canon = sorted(json.dumps(t, sort_keys=True) for t in tracks.values())
        blob = json.dumps({"grid": self.grid, "n": self.n_frames, "tracks": canon}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        return {"canvas": self.canvas, "grid": self.grid, "background": self.background,
                "noise_amp": self.noise_amp, "noise_seed": self.noise_seed,
                "frames": [[o.to_dict() for o in objs] for objs in self.frames]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        frames = [[SceneObject(o["shape"], o["color"], tuple(o["box"]), o.get("oid", 0), o.get("distractor", False))
                   for o in objs] for objs in d["frames"]]
        return cls(canvas=d["canvas"], grid=d["grid"], frames=frames, background=d.get("background", "plain"),
                   noise_amp=d.get("noise_amp", 12), noise_seed=d.get("noise_seed", 0))


# ---------------------------------------------------------------------------------------------- geometry


def cell_bounds(canvas: int, grid: int, row: int, col: int) -> Box:
    """Pixel rectangle ``(x0, y0, x1, y1)`` (exclusive) of a grid cell; the canvas is split evenly."""
    if not (0 <= row < grid and 0 <= col < grid):
        raise ValueError(f"cell ({row}, {col}) outside a {grid}x{grid} grid")
    return (col * canvas // grid, row * canvas // grid, (col + 1) * canvas // grid, (row + 1) * canvas // grid)


def cell_of_point(pt: tuple[float, float], canvas: int, grid: int) -> tuple[int, int]:
    x, y = pt
    col = min(grid - 1, max(0, int(x * grid // canvas)))
    row = min(grid - 1, max(0, int(y * grid // canvas)))
    return (row, col)


_NAMES = {
    2: (("top", "bottom"), ("left", "right")),
    3: (("top", "middle", "bottom"), ("left", "middle", "right")),
}


def cell_name(row: int, col: int, grid: int) -> str:
    """Short cell name: "top-left" (2x2 / 3x3; the 3x3 centre is "center"), else "row 2, column 3"."""
    if grid in _NAMES:
        rows, cols = _NAMES[grid]
        if rows[row] == "middle" and cols[col] == "middle":
            return "center"
        return f"{rows[row]}-{cols[col]}"
    return f"row {row + 1}, column {col + 1}"


def cell_phrase(row: int, col: int, grid: int) -> str:
    """Noun phrase for a cell: "the top-left cell" or "the cell in row 2, column 3"."""
    if grid in _NAMES:
        return f"the {cell_name(row, col, grid)} cell"
    return f"the cell in {cell_name(row, col, grid)}"


def box_in_cell(canvas: int, grid: int, row: int, col: int, size: int, fx: float, fy: float) -> Box:
    """A ``size`` square box inside the cell; ``fx, fy`` in [0, 1] place it within the free margin."""
    cx0, cy0, cx1, cy1 = cell_bounds(canvas, grid, row, col)
    size = max(1, min(size, cx1 - cx0 - 2, cy1 - cy0 - 2))
    free_x = cx1 - cx0 - 2 - size
    free_y = cy1 - cy0 - 2 - size
    x0 = cx0 + 1 + int(round(fx * free_x))
    y0 = cy0 + 1 + int(round(fy * free_y))
    return (x0, y0, x0 + size, y0 + size)


def min_cell_side(canvas: int, grid: int) -> int:
    return canvas // grid - 2


# ---------------------------------------------------------------------------------------------- drawing


def draw_object(draw: ImageDraw.ImageDraw, shape: str, rgb: tuple[int, int, int], box: Box) -> None:
    """Draw a filled shape inside ``box`` (exclusive); every drawn pixel lies inside the box, and the box centre
    pixel is always covered."""
    x0, y0, x1, y1 = box
    xa, ya = x1 - 1, y1 - 1  # inclusive corners for Pillow
    w, h = x1 - x0, y1 - y0
    if shape == "circle":
        draw.ellipse([x0, y0, xa, ya], fill=rgb)
    elif shape == "square":
        draw.rectangle([x0, y0, xa, ya], fill=rgb)
    elif shape == "triangle":
        draw.polygon([(x0, ya), (xa, ya), ((x0 + xa) / 2.0, y0)], fill=rgb)
    elif shape == "diamond":
        mx, my = (x0 + xa) / 2.0, (y0 + ya) / 2.0
        draw.polygon([(mx, y0), (xa, my), (mx, ya), (x0, my)], fill=rgb)
    elif shape == "cross":
        tx = max(1, w // 3)
        ty = max(1, h // 3)
        bx0 = x0 + (w - tx) // 2
        by0 = y0 + (h - ty) // 2
        draw.rectangle([bx0, y0, bx0 + tx - 1, ya], fill=rgb)
        draw.rectangle([x0, by0, xa, by0 + ty - 1], fill=rgb)
    else:  # pragma: no cover - guarded by SceneObject
        raise ValueError(f"unknown shape {shape!r}")


def render_background(canvas: int, background: str = "plain", noise_amp: int = 12, noise_seed: int = 0
                      ) -> Image.Image:
    if background == "plain" or noise_amp <= 0:
        return Image.new("RGB", (canvas, canvas), BACKGROUND_RGB)
    rng = np.random.default_rng(noise_seed)
    base = np.array(BACKGROUND_RGB, dtype=np.int16)
    noise = rng.integers(-noise_amp, noise_amp + 1, size=(canvas, canvas, 1), dtype=np.int16)
    arr = np.clip(base[None, None, :] + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, mode="RGB")


def render_frame(scene: Scene, frame: int) -> Image.Image:
    img = render_background(scene.canvas, scene.background, scene.noise_amp, scene.noise_seed)
    draw = ImageDraw.Draw(img)
    for o in scene.frames[frame]:
        draw_object(draw, o.shape, ALL_COLORS[o.color], o.box)
    return img


def render_scene(scene: Scene) -> list[Image.Image]:
    """All frames of the scene as RGB images (one for an image scene). Same background noise in every frame."""
    return [render_frame(scene, f) for f in range(scene.n_frames)]
