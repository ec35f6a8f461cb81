"""A sample's media → the frames a model sees (:func:`load_frames`), under the paper's pixel and frame budgets.

Where it runs: rollout workers, learners, the teacher and evaluation decode; the driver only reads file headers
(:mod:`ral_dist.data.readers`). Video files are decoded with PyAV (:mod:`ral_dist.data.video`: its wheels bundle
FFmpeg; torchcodec needs the system's FFmpeg libraries beside CPU torch). Decoded frames are kept in a small LRU
cache per process, keyed by (file, modification time, settings), so a worker that sees a prompt G times or on
every epoch decodes it once. Cached frames are shared: callers must not modify them in place.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .sample import Sample
from .video import MediaError, decode_video

__all__ = ["Frames", "ImageConfig", "MediaConfig", "MediaError", "VideoConfig", "clear_cache", "fit_pixels",
           "load_frames", "resize_into"]

_TOKEN_PIXELS = 28 * 28  # one visual token of Qwen2.5-VL (14 px patches merged 2 x 2): the unit of the budgets


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Budget(_Strict):
    @model_validator(mode="after")
    def _ordered(self):
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) > max_pixels ({self.max_pixels})")
        return self


class ImageConfig(_Budget):
    """Pixel budget of an image (paper: 128 to 5120 visual tokens of 28 x 28 pixels)."""

    max_pixels: int = Field(5120 * _TOKEN_PIXELS, ge=1, description="larger images are scaled down to this "
                                                                    "(aspect kept); paper: 5120 * 28 * 28")
    min_pixels: int = Field(16 * _TOKEN_PIXELS, ge=1,
                            description="smaller images are scaled up to this. 16 * 28 * 28 = 112 x 112 px: the "
                                        "synthetic task's images stay as they are; paper: 128 * 28 * 28 (set in "
                                        "jobs/configs/qwen25vl_7b.yaml)")


class VideoConfig(_Budget):
    """Sampling and per-frame budget of a video (paper: 1 fps, at most 128 frames, 128 * 28 * 28 px a frame)."""

    fps: float = Field(1.0, gt=0, description="frames sampled per second of a video file")
    max_frames: int = Field(128, ge=1, description="at most this many frames, evenly spaced over the video")
    max_pixels: int = Field(128 * _TOKEN_PIXELS, ge=1, description="per-frame budget; larger frames are scaled "
                                                                  "down (aspect kept)")
    min_pixels: int = Field(16 * _TOKEN_PIXELS, ge=1,
                            description="smaller frames are scaled up. 16 * 28 * 28 = 112 x 112 px (16 tokens): the "
                                        "synthetic task's frames stay as they are, and a frame still resolves a 4 x 4 "
                                        "grid; Qwen's own default (128 tokens) would multiply short clips' tokens by 8")


class MediaConfig(_Strict):
    """How media become frames: ``data.image``, ``data.video`` and the per-process frame cache."""

    image: ImageConfig = Field(default_factory=ImageConfig)
    video: VideoConfig = Field(default_factory=VideoConfig)
    cache_mb: int = Field(256, ge=0, description="decoded frames kept per process (RGB bytes); 0 disables")


@dataclass(frozen=True)
class Frames:
    images: list[Image.Image]  # RGB, within the pixel budget
    fps: float | None  # the rate of a video's frames as returned; None for an image or frames of unknown rate
    timestamps: list[float]  # seconds, one per frame


def fit_pixels(width: int, height: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(width, height) scaled with the aspect kept so that width x height lies in [min_pixels, max_pixels]."""
    area = width * height
    if area > max_pixels:
        s = math.sqrt(max_pixels / area)
        return max(1, math.floor(width * s)), max(1, math.floor(height * s))
    if area < min_pixels:
        s = math.sqrt(min_pixels / area)
        w, h = math.ceil(width * s), math.ceil(height * s)
        if w * h > max_pixels:  # rounding up overshot a budget as tight as min_pixels
            w, h = math.floor(width * s), math.floor(height * s)
        return w, h
    return width, height


def resize_into(image: Image.Image, min_pixels: int, max_pixels: int) -> Image.Image:
    """``image`` as RGB, resized (bicubic, as Qwen's processor) into the pixel budget; unchanged when inside it."""
    image = image.convert("RGB")
    size = fit_pixels(*image.size, min_pixels, max_pixels)
    return image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)


# ---------------------------------------------------------------------------------------------- cache

_lock = threading.Lock()
_cache: LRUCache | None = None


def _nbytes(frames: Frames) -> int:
    return sum(im.width * im.height * len(im.getbands()) for im in frames.images) or 1


def _cache_for(mb: int) -> LRUCache | None:
    global _cache
    if mb <= 0:
        return None
    if _cache is None or _cache.maxsize != mb * 2**20:
        _cache = LRUCache(maxsize=mb * 2**20, getsizeof=_nbytes)
    return _cache


def clear_cache() -> None:
    global _cache
    with _lock:
        _cache = None


def _cached(key: tuple, mb: int, load) -> Frames:
    with _lock:
        cache = _cache_for(mb)
        hit = cache.get(key) if cache is not None else None
    if hit is not None:
        return hit
    frames = load()
    with _lock:
        if cache is not None and _nbytes(frames) <= cache.maxsize:
            cache[key] = frames
    return frames


# ---------------------------------------------------------------------------------------------- loading


def _stamp(path: Path) -> tuple[str, int]:
    try:
        return str(path.resolve()), path.stat().st_mtime_ns
    except OSError:
        raise MediaError(path, "missing file") from None


def _open_image(path: Path, min_pixels: int, max_pixels: int) -> Image.Image:
    try:
        with Image.open(path) as im:
            return resize_into(im, min_pixels, max_pixels)
    except Exception as e:  # any decoder error (OSError, DecompressionBombError, ...) means an unusable file
        raise MediaError(path, "unreadable image", f"{type(e).__name__}: {e}") from None


def load_frames(sample: Sample, media: MediaConfig) -> Frames:
    """The frames the model sees for ``sample``.

    - in-memory ``images`` (the generator's): as they are; timestamps k / ``video.fps``.
    - an image file: resized into ``image.min_pixels .. image.max_pixels``.
    - a video file: sampled at ``video.fps`` (at most ``video.max_frames``, then evenly spaced), each frame resized
      into the video budget; ``fps`` is the achieved rate, timestamps the frames' presentation times.
    - frame image files: the frames as listed, resized into the video budget; fps None, timestamps k / ``video.fps``
      (taken as sampled at the configured rate).

    Raises :class:`MediaError` naming the file for a missing, unreadable or empty one.
    """
    v = media.video
    if sample.images:
        images = list(sample.images)
        return Frames(images, None, [k / v.fps for k in range(len(images))] if sample.kind == "video" else [0.0])
    paths = sample.media_paths()
    if sample.kind == "image":
        budget = (media.image.min_pixels, media.image.max_pixels)
        key = ("image", _stamp(paths[0]), budget)
        return _cached(key, media.cache_mb, lambda: Frames([_open_image(paths[0], *budget)], None, [0.0]))
    if sample.is_video_file:
        key = ("video", _stamp(paths[0]), v)

        def decode() -> Frames:
            images, times, fps = decode_video(paths[0], v.fps, v.max_frames,
                                              lambda im: resize_into(im, v.min_pixels, v.max_pixels))
            return Frames(images, fps, times)

        return _cached(key, media.cache_mb, decode)
    key = ("frames", tuple(_stamp(p) for p in paths), v.min_pixels, v.max_pixels)
    return _cached(key, media.cache_mb, lambda: Frames(
        [_open_image(p, v.min_pixels, v.max_pixels) for p in paths], None,
        [k / v.fps for k in range(len(paths))]))
