"""Media → frames: video files decoded with PyAV at the configured fps / max_frames, pixel budgets, the frame cache,
and clear errors for missing, undecodable and empty files. Every video is encoded here with PyAV."""

from __future__ import annotations

import math
import os
import pickle

import numpy as np
import pytest
from media_fixtures import empty_video
from PIL import Image

from ral_dist.data import MediaConfig, MediaError, Sample, load_frames
from ral_dist.data.media import ImageConfig, VideoConfig, clear_cache, fit_pixels
from ral_dist.data.video import encode_video, probe


def _frames(n: int, w: int = 160, h: int = 120) -> list[Image.Image]:
    """Frame k: a solid colour of its own and a white square at a place of its own; the default size lies inside
    the default per-frame budget, so frames come back unresized (and exact: the encoding is lossless)."""
    out = []
    for k in range(n):
        a = np.zeros((h, w, 3), np.uint8)
        a[:] = ((37 * k) % 256, (91 * k + 40) % 256, (53 * k + 7) % 256)
        a[2:8, 2 + k % (w - 10): 8 + k % (w - 10)] = 255
        out.append(Image.fromarray(a))
    return out


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _video_sample(path, kind="video") -> Sample:
    return Sample(id=path.stem, kind=kind, media=[path.name], root=str(path.parent), question="q", answer="a")


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def test_one_fps_returns_one_frame_a_second(tmp_path):
    src = _frames(10)
    encode_video(src, tmp_path / "v.mp4", fps=2.0)  # 5 s
    info = probe(tmp_path / "v.mp4")
    assert (info.frames, info.width, info.height) == (10, 160, 120) and info.duration == pytest.approx(5.0)
    got = load_frames(_video_sample(tmp_path / "v.mp4"), MediaConfig())
    assert got.timestamps == pytest.approx([0, 1, 2, 3, 4]) and got.fps == pytest.approx(1.0)
    assert all(_same(a, b) for a, b in zip(got.images, src[::2], strict=True))


def test_max_frames_evenly_spaced_and_fps_is_frames_over_duration(tmp_path):
    encode_video(_frames(30), tmp_path / "v.mp4", fps=10.0)  # 3 s
    media = MediaConfig(video=VideoConfig(fps=5.0, max_frames=6))  # 15 wanted, 6 allowed
    got = load_frames(_video_sample(tmp_path / "v.mp4"), media)
    assert len(got.images) == 6
    assert got.timestamps == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    assert got.fps == pytest.approx(6 / 3.0)


def test_a_file_with_fewer_frames_reports_the_achieved_fps(tmp_path):
    src = _frames(3)
    encode_video(src, tmp_path / "slow.mkv", fps=0.5)  # frames at 0, 2, 4 s; another container
    got = load_frames(_video_sample(tmp_path / "slow.mkv"), MediaConfig())  # asks for 1 fps
    assert got.timestamps == pytest.approx([0.0, 2.0, 4.0]) and got.fps == pytest.approx(0.5)
    assert all(_same(a, b) for a, b in zip(got.images, src, strict=True))


def test_video_frames_fit_the_per_frame_budget(tmp_path):
    encode_video(_frames(2, w=640, h=480), tmp_path / "big.mp4")
    budget = 128 * 28 * 28
    got = load_frames(_video_sample(tmp_path / "big.mp4"), MediaConfig())
    for im in got.images:
        assert im.width * im.height <= budget and im.width * im.height > 0.97 * budget
        assert im.width / im.height == pytest.approx(640 / 480, rel=0.01)


def test_image_budgets_scale_down_and_up_keeping_the_aspect(tmp_path):
    Image.new("RGB", (4000, 3000), (10, 20, 30)).save(tmp_path / "large.jpg")
    Image.new("RGB", (50, 30), (10, 20, 30)).save(tmp_path / "small.png")
    Image.new("RGB", (400, 300), (10, 20, 30)).save(tmp_path / "fits.png")
    media = MediaConfig(image=ImageConfig(min_pixels=100 * 100, max_pixels=1000 * 1000))
    large, small, fits = (load_frames(_video_sample(tmp_path / n, "image"), media).images[0]
                          for n in ("large.jpg", "small.png", "fits.png"))
    assert large.width * large.height <= 1000 * 1000 and large.size == (1154, 866)
    assert small.width * small.height >= 100 * 100 and small.width / small.height == pytest.approx(50 / 30, rel=0.02)
    assert fits.size == (400, 300)
    assert fit_pixels(4000, 3000, 1, 5120 * 28 * 28)[0] * fit_pixels(4000, 3000, 1, 5120 * 28 * 28)[1] <= 5120 * 784


def test_frame_lists_and_in_memory_images(tmp_path):
    src = _frames(3, w=400, h=300)
    for k, im in enumerate(src):
        im.save(tmp_path / f"f{k}.png")
    listed = Sample(id="l", kind="video", media=[f"f{k}.png" for k in range(3)], root=str(tmp_path),
                    question="q", answer="a")
    got = load_frames(listed, MediaConfig(video=VideoConfig(fps=2.0)))
    assert len(got.images) == 3 and got.fps is None and got.timestamps == [0.0, 0.5, 1.0]
    assert all(im.width * im.height <= 128 * 28 * 28 for im in got.images)
    memory = Sample(id="m", kind="video", images=src, question="q", answer="a")
    kept = load_frames(memory, MediaConfig())
    assert [im.size for im in kept.images] == [(400, 300)] * 3 and kept.timestamps == [0.0, 1.0, 2.0]


def test_cache_decodes_once_and_sees_a_changed_file(tmp_path):
    path = tmp_path / "v.mp4"
    encode_video(_frames(4), path)
    sample = _video_sample(path)
    first = load_frames(sample, MediaConfig())
    assert load_frames(sample, MediaConfig()) is first  # same prompt again: no second decode
    assert load_frames(sample, MediaConfig(video=VideoConfig(fps=2.0))) is not first  # other settings
    encode_video(_frames(2), path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert len(load_frames(sample, MediaConfig()).images) == 2  # the new file, not the cached frames
    off = MediaConfig(cache_mb=0)
    assert load_frames(sample, off) is not load_frames(sample, off)


def test_bad_media_raise_a_clear_error(tmp_path):
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 50)
    empty_video(tmp_path / "empty.mkv")
    (tmp_path / "broken.png").write_text("not a png")
    cases = {"missing.mp4": "missing file", "garbage.mp4": "undecodable video", "empty.mkv": "zero frames",
             "broken.png": "unreadable image", "missing.png": "missing file"}
    for name, reason in cases.items():
        kind = "image" if name.endswith(".png") else "video"
        with pytest.raises(MediaError) as err:
            load_frames(_video_sample(tmp_path / name, kind), MediaConfig())
        assert err.value.reason == reason and name in str(err.value), str(err.value)
    with pytest.raises(MediaError, match="zero frames"):
        probe(tmp_path / "empty.mkv")


def test_budgets_are_validated():
    with pytest.raises(ValueError):
        VideoConfig(min_pixels=10, max_pixels=5)
    with pytest.raises(ValueError):
        MediaConfig(video={"fps": 0})
    assert MediaConfig().video.max_frames == 128 and MediaConfig().image.max_pixels == 5120 * 28 * 28
    assert math.isclose(MediaConfig().video.fps, 1.0)


def test_a_sample_pickles_without_pixels_after_its_frames_were_loaded(tmp_path):
    encode_video(_frames(4, w=320, h=240), tmp_path / "v.mp4")
    sample = _video_sample(tmp_path / "v.mp4")
    frames = load_frames(sample, MediaConfig())
    assert len(frames.images) == 4
    assert len(pickle.dumps(sample)) < 2000 and sample.images == []
