"""The unit of data: one question about an image or a video, validated once when it is read or generated.

A :class:`Sample` names its media by path (``media``, relative to ``root`` unless absolute) and never carries pixels
when read from disk; the generator's samples also hold their frames in memory (``images``, never serialised).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictStr, field_validator, model_validator

from ral_dist.algorithms import PROBLEM_TYPES, ProblemType, strip_answer_tags

#: Video containers decoded with PyAV (:mod:`ral_dist.data.video`); any other media path is an image file.
VIDEO_EXTENSIONS = (".mp4", ".webm", ".avi", ".mkv")

__all__ = ["PROBLEM_TYPES", "RECORD_FIELDS", "VIDEO_EXTENSIONS", "ProblemType", "Sample", "is_video_file",
           "strip_think_tags"]

#: Fields of a normalised JSONL row (:meth:`Sample.to_record`), in this order.
RECORD_FIELDS = ("id", "kind", "media", "question", "options", "answer", "problem_type", "qtype", "regions",
                 "rationale", "layout_key", "source", "root")

_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def strip_think_tags(text: str) -> str:
    """The content of the first ``<think>…</think>`` (Video-R1's ``process``), else the text stripped."""
    m = _THINK.search(text)
    return (m.group(1) if m else text).strip()


def _as_int(v: Any) -> int:
    # JSON writers may emit 12.0 for 12; a bool or 12.5 is a broken box
    if isinstance(v, bool) or not (isinstance(v, int) or (isinstance(v, float) and v.is_integer())):
        raise ValueError(f"{v!r} is not an integer")
    return int(v)


class Sample(BaseModel):
    """A question about an image or a video.

    ``media``: an image row has exactly one image file; a video row has one video file (mp4/webm/avi/mkv) or one
    image file per frame. ``regions`` are ground-truth boxes ``[frame, x0, y0, x1, y1]`` in pixels of the original
    frame (x1/y1 exclusive), ``frame`` indexing the frames the model sees. ``frame_hw`` is (height, width) of the
    original frames when known (readers fill it from the file headers, the generator from its frames).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    id: StrictStr = Field(min_length=1)
    kind: Literal["image", "video"]
    media: list[StrictStr] = Field(default_factory=list)
    question: StrictStr
    options: list[StrictStr] = Field(default_factory=list)
    answer: StrictStr
    problem_type: ProblemType = "free-form"
    qtype: StrictStr = "unknown"
    regions: list[list[int]] = Field(default_factory=list)
    rationale: StrictStr = ""
    layout_key: StrictStr = ""
    source: StrictStr = ""
    root: StrictStr = ""
    frame_hw: tuple[int, int] | None = None
    images: list[Image.Image] = Field(default_factory=list, exclude=True, repr=False)
    meta: dict = Field(default_factory=dict, repr=False)

    @field_validator("answer")
    @classmethod
    def _strip_answer(cls, v: str) -> str:
        return strip_answer_tags(v).strip()

    @field_validator("rationale")
    @classmethod
    def _strip_think(cls, v: str) -> str:
        return strip_think_tags(v)

    @field_validator("media")
    @classmethod
    def _paths(cls, v: list[str]) -> list[str]:
        if any(not p for p in v):
            raise ValueError("empty path")
        return v

    @field_validator("regions", mode="before")
    @classmethod
    def _boxes(cls, v: Any) -> list[list[int]]:
        if v is None:
            return []
        if not isinstance(v, list):
            raise ValueError("expected a list of [frame, x0, y0, x1, y1]")
        out = []
        for r in v:
            if not isinstance(r, list | tuple) or len(r) != 5:
                raise ValueError(f"{r!r} is not [frame, x0, y0, x1, y1]")
            f, x0, y0, x1, y1 = (_as_int(x) for x in r)
            if f < 0 or x0 < 0 or y0 < 0 or x1 <= x0 or y1 <= y0:
                raise ValueError(f"bad box {list(r)!r}")
            out.append([f, x0, y0, x1, y1])
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Sample:
        if not self.media and not self.images:
            raise ValueError("media: a sample needs media paths or in-memory images")
        videos = [p for p in self.media if is_video_file(p)]
        if self.kind == "image":
            if len(self.media) > 1 or videos or len(self.images) > 1:
                raise ValueError("media: an image row has exactly one image file")
        elif videos and len(self.media) > 1:
            raise ValueError("media: a video row has one video file or image files of its frames, not both")
        if self.images and self.media and not videos and len(self.media) != len(self.images):
            raise ValueError(f"media: {len(self.images)} in-memory frames but {len(self.media)} frame paths")
        if self.frame_hw is None and self.images:
            w, h = self.images[0].size
            self.frame_hw = (h, w)
        known = self.images or (self.media if not videos else [])
        for box in self.regions:
            if known and box[0] >= len(known):
                raise ValueError(f"regions: frame {box[0]} outside the {len(known)} frames")
            if self.frame_hw is not None and (box[3] > self.frame_hw[1] or box[4] > self.frame_hw[0]):
                h, w = self.frame_hw
                raise ValueError(f"regions: box {box} outside the {w}x{h} frame")
        return self

    @property
    def is_video_file(self) -> bool:
        """One video container (decoded at the configured fps), not a list of frame images."""
        return len(self.media) == 1 and is_video_file(self.media[0])

    @property
    def n_frames(self) -> int:
        """Frames of in-memory images or of a frame list. A video file's count depends on the sampling: use the
        length of :func:`ral_dist.data.media.load_frames`' frames."""
        if self.images:
            return len(self.images)
        if self.is_video_file:
            raise ValueError(f"sample {self.id}: the frame count of video file {self.media[0]} depends on the "
                             "sampling (fps, max_frames); use len(load_frames(sample, media).images)")
        return len(self.media)

    def media_paths(self) -> list[Path]:
        """``media`` resolved against ``root`` (absolute paths kept)."""
        root = Path(self.root or ".")
        return [Path(p) if Path(p).is_absolute() else root / p for p in self.media]

    def get_images(self) -> list[Image.Image]:
        """The frames as stored, not resized: ``images`` when in memory, else the image files read as RGB (not
        cached). Video files and pixel budgets are :func:`ral_dist.data.media.load_frames`' job."""
        if self.images:
            return self.images
        if self.is_video_file:
            raise ValueError(f"sample {self.id}: {self.media[0]} is a video file; use "
                             "ral_dist.data.media.load_frames(sample, media)")
        out = []
        for p in self.media_paths():
            with Image.open(p) as im:
                out.append(im.convert("RGB"))
        return out

    def to_record(self) -> dict:
        """Flat JSON-able row with the fields of :data:`RECORD_FIELDS` (no pixels, no ``meta``)."""
        row = self.model_dump(include=set(RECORD_FIELDS))
        return {k: row[k] for k in RECORD_FIELDS}
