"""The unit of data: one grounded question about an image or a short video."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

#: Fields written to / read from a JSONL row, in this order.
RECORD_FIELDS = ("id", "kind", "images", "question", "answer", "qtype", "regions", "rationale", "layout_key")


@dataclass
class Sample:
    """A grounded VQA item.

    ``regions`` are the ground-truth boxes ``[frame, x0, y0, x1, y1]`` (pixels of that frame, x1/y1 exclusive;
    frame 0 for images) of the objects that decide the answer. ``images`` holds PIL frames and is never
    serialised; ``image_paths`` are the relative paths used on disk. When ``images`` is empty (a dataset read
    with ``load_images=False``) :meth:`get_images` loads them from ``meta["root"] / image_paths``.
    """

    id: str
    kind: Literal["image", "video"]
    images: list[Image.Image] = field(default_factory=list, repr=False)
    image_paths: list[str] = field(default_factory=list)
    question: str = ""
    answer: str = ""
    qtype: str = "unknown"
    regions: list[list[int]] = field(default_factory=list)
    rationale: str = ""
    layout_key: str = ""
    meta: dict = field(default_factory=dict, repr=False)

    @property
    def n_frames(self) -> int:
        return len(self.images) if self.images else len(self.image_paths)

    @property
    def frame_hw(self) -> tuple[int, int]:
        """(height, width) of the frames."""
        if self.images:
            w, h = self.images[0].size
            return (h, w)
        if "frame_hw" in self.meta:
            h, w = self.meta["frame_hw"]
            return (int(h), int(w))
        w, h = self.get_images()[0].size
        return (h, w)

    def get_images(self) -> list[Image.Image]:
        """The RGB frames: ``images`` if loaded, else read from ``meta["root"]`` (not cached)."""
        if self.images:
            return self.images
        root = Path(self.meta.get("root", "."))
        out = []
        for p in self.image_paths:
            with Image.open(root / p) as im:
                out.append(im.convert("RGB"))
        return out

    def to_record(self) -> dict:
        """Flat JSON-able row (``images`` = relative paths)."""
        return {
            "id": str(self.id),
            "kind": str(self.kind),
            "images": [str(p) for p in self.image_paths],
            "question": str(self.question),
            "answer": str(self.answer),
            "qtype": str(self.qtype),
            "regions": [[int(v) for v in r] for r in self.regions],
            "rationale": str(self.rationale),
            "layout_key": str(self.layout_key),
        }
