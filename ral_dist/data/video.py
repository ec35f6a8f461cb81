"""Video files through PyAV: :func:`probe` (header metadata), :func:`decode_video` (frames at a sampling rate) and
:func:`encode_video` (the exporter's lossless mp4).

PyAV (``av`` on the package index) is used because its wheels bundle FFmpeg: nothing is needed from the system.
torchcodec, the other well-kept decoder, loads the system's FFmpeg shared libraries, which a CPU-torch install on a
bare image does not have.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image


class MediaError(Exception):
    """A media file that cannot be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {path}" + (f" ({detail})" if detail else ""))
        self.path = str(path)
        self.reason = reason  # short and fixed (counted per reason): missing file, undecodable video, zero frames
        self.detail = detail


@dataclass(frozen=True)
class VideoInfo:
    duration: float  # seconds
    frames: int  # frame count from the header (or duration x rate when the header has none)
    width: int
    height: int
    rate: float | None  # the file's own frame rate, when known


def probe(path: str | Path) -> VideoInfo:
    """Metadata from the container header, without decoding a frame. Raises :class:`MediaError` for a missing
    file, a file FFmpeg cannot open (``undecodable video``) or one without frames (``zero frames``)."""
    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "missing file")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "zero frames", "no video stream")
            s = container.streams.video[0]
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            else:
                duration = container.duration / av.time_base if container.duration else 0.0
            rate = float(s.average_rate) if s.average_rate else None
            frames = int(s.frames) or (round(duration * rate) if rate else 0)
            width, height = s.codec_context.width, s.codec_context.height
    except av.FFmpegError as e:
        raise MediaError(path, "undecodable video", f"{type(e).__name__}: {e}") from None
    if frames <= 0 or duration <= 0:
        raise MediaError(path, "zero frames")
    if width <= 0 or height <= 0:
        raise MediaError(path, "undecodable video", "no frame size in the header")
    return VideoInfo(duration=duration, frames=frames, width=width, height=height, rate=rate)


def sample_times(duration: float, fps: float, max_frames: int) -> list[float]:
    """Target times (s): every 1/fps from 0 while before the end; when that is more than ``max_frames``,
    ``max_frames`` times evenly spaced over the whole duration."""
    n = max(1, math.ceil(duration * fps - 1e-6))
    if n <= max_frames:
        return [k / fps for k in range(n)]
    return [k * duration / max_frames for k in range(max_frames)]


def achieved_fps(timestamps: list[float], fallback: float) -> float:
    """The rate of the returned frames, (n - 1) / (last - first) s; ``fallback`` for a single frame."""
    if len(timestamps) < 2 or timestamps[-1] <= timestamps[0]:
        return fallback
    return (len(timestamps) - 1) / (timestamps[-1] - timestamps[0])


def decode_video(path: str | Path, fps: float, max_frames: int,
                 transform: Callable[[Image.Image], Image.Image] = lambda im: im
                 ) -> tuple[list[Image.Image], list[float], float]:
    """Frames of ``path`` at the :func:`sample_times` targets: for each target the first frame at or after it
    (within half a frame of the file's own rate); targets that land on the same frame give it once, so a file
    with fewer frames than targets returns fewer. Returns (RGB frames through ``transform``, their timestamps in
    seconds, the achieved fps). Decodes sequentially and stops after the last target."""
    info = probe(path)
    targets = sample_times(info.duration, fps, max_frames)
    tol = 0.5 / info.rate if info.rate else 0.0
    frames: list[Image.Image] = []
    times: list[float] = []
    k = 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                t = float(frame.time) if frame.time is not None else i / (info.rate or fps)
                if t + tol < targets[k]:
                    continue
                frames.append(transform(frame.to_image().convert("RGB")))
                times.append(t)
                while k < len(targets) and targets[k] <= t + tol:
                    k += 1
                if k == len(targets):
                    break
    except av.FFmpegError as e:
        raise MediaError(path, "undecodable video", f"{type(e).__name__}: {e}") from None
    if not frames:
        raise MediaError(path, "zero frames")
    return frames, times, achieved_fps(times, fps)


def encode_video(frames: list[Image.Image], path: str | Path, fps: float = 1.0) -> Path:
    """Write ``frames`` as a lossless H.264 mp4 (libx264rgb, qp 0) at ``fps``: frame k at k / fps s, so decoding
    at the same fps returns exactly these frames, pixel for pixel (the synthetic answers are colours)."""
    path = Path(path)
    w, h = frames[0].size
    rate = Fraction(fps).limit_denominator(1000)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264rgb", rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "rgb24"
        stream.options = {"qp": "0"}
        for k, im in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.asarray(im.convert("RGB")), format="rgb24")
            frame.pts, frame.time_base = k, 1 / rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path
