"""Broken media built in the tests (no binaries in the repository)."""

from pathlib import Path

import av
import numpy as np


def empty_video(path: Path) -> None:
    """A container with a video track and no frame (only an audio packet): it probes, and decodes to nothing."""
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=1)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=48000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="flt", layout="mono")
        frame.sample_rate, frame.pts = 48000, 0
        out.mux(a.encode(frame))
        out.mux(a.encode())
