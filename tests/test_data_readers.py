"""Readers: a Video-R1 JSON array / JSONL built here (mp4 and mkv videos encoded with PyAV, JPEG and PNG images,
integer ids, options, tags, all five problem types) with planted bad rows: every good row loads, each bad row is
skipped with its reason, nothing is decoded at read time, and read samples carry no pixels."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import av
import pytest
from media_fixtures import empty_video
from PIL import Image

from ral_dist.config import DataConfig
from ral_dist.data import (
    PROBLEM_TYPES,
    ImageConfig,
    MediaConfig,
    load_frames,
    read_split,
    skip_counts,
    write_skipped,
)
from ral_dist.data.readers import detect_format
from ral_dist.data.video import encode_video
from ral_dist.data.video_r1 import read_video_r1

GOOD_IDS = ["101", "102", "103", "104", "105", "106"]
#: planted bad rows: problem_id -> the category of the reason it must be skipped with
BAD = {
    201: "unknown problem_type",
    202: "missing file",
    203: "undecodable video",
    204: "zero frames",
    205: "invalid field 'solution'",
    206: "missing field 'problem'",
    207: "invalid field 'data_type'",
    208: "invalid field 'path'",
    209: "unreadable image",
    210: "invalid field 'regions'",
    211: "invalid field 'options'",
}


def _solid(w: int, h: int, color) -> Image.Image:
    return Image.new("RGB", (w, h), color)


def _rec(pid, ptype, path, solution, data_type=None, **extra) -> dict:
    kind = data_type or ("video" if path.endswith((".mp4", ".mkv")) else "image")
    return {"problem_id": pid, "problem": f"Question {pid}?", "data_type": kind, "problem_type": ptype,
            "options": [], "process": f"<think>Because {pid}.</think>", "solution": solution, "path": path,
            "data_source": "fixture", **extra}


def build_video_r1(root: Path) -> list:
    """Media under ``root/Video-R1-data`` and the records (good ones first, then the bad, then a duplicate)."""
    media = root / "Video-R1-data"
    media.mkdir(parents=True)
    encode_video([_solid(160, 120, (30 * k, 80, 200)) for k in range(4)], media / "clip.mp4", fps=1.0)
    encode_video([_solid(128, 128, (200, 30 * k, 10)) for k in range(3)], media / "clip.mkv", fps=1.0)
    _solid(200, 100, (250, 10, 10)).save(media / "photo.jpg", quality=95)
    _solid(120, 90, (10, 250, 10)).save(media / "sign.png")
    (media / "garbage.mp4").write_bytes(b"\x00not a video" * 40)
    empty_video(media / "empty.mkv")
    (media / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    good = [
        _rec(101, "multiple choice", "./Video-R1-data/clip.mp4", "<answer>B</answer>",
             options=["A. red", "B. blue", "C. green"], regions=[[3, 10, 10, 50, 40]]),
        _rec(102, "numerical", "./Video-R1-data/photo.jpg", "<answer>3.5</answer>"),
        _rec(103, "OCR", "./Video-R1-data/sign.png", "<answer> HELLO WORLD </answer>"),
        _rec(104, "free-form", "./Video-R1-data/clip.mkv", "<answer>a red ball rolls</answer>"),
        _rec(105, "regression", "./Video-R1-data/photo.jpg", "<answer>12.25</answer>"),
        {"problem_id": 106, "problem": "Minimal?", "data_type": "image", "problem_type": "free-form",
         "solution": "yes", "path": "./Video-R1-data/sign.png"},  # no options, process nor data_source; no tags
    ]
    bad = [
        _rec(201, "essay", "./Video-R1-data/photo.jpg", "<answer>x</answer>"),
        _rec(202, "numerical", "./Video-R1-data/nowhere.mp4", "<answer>1</answer>"),
        _rec(203, "numerical", "./Video-R1-data/garbage.mp4", "<answer>1</answer>"),
        _rec(204, "numerical", "./Video-R1-data/empty.mkv", "<answer>1</answer>"),
        _rec(205, "numerical", "./Video-R1-data/photo.jpg", 5),
        {k: v for k, v in _rec(206, "OCR", "./Video-R1-data/sign.png", "<answer>x</answer>").items()
         if k != "problem"},
        _rec(207, "OCR", "./Video-R1-data/sign.png", "<answer>x</answer>", data_type="audio"),
        _rec(208, "OCR", "./Video-R1-data/clip.mp4", "<answer>x</answer>", data_type="image"),
        _rec(209, "OCR", "./Video-R1-data/broken.jpg", "<answer>x</answer>"),
        _rec(210, "OCR", "./Video-R1-data/sign.png", "<answer>x</answer>", regions=[[0, 0, 0, 500, 10]]),
        _rec(211, "multiple choice", "./Video-R1-data/sign.png", "<answer>A</answer>", options=[1, 2]),
    ]
    return [*good, *bad, "not an object", dict(good[1], problem="A repeated id")]


def _write_array(root: Path, records: list) -> Path:
    path = root / "Video-R1-260k.json"
    path.write_text(json.dumps(records))
    return path


def _check(samples, skipped, position) -> None:
    """``position``: the 1-based line/item of record i (0-based) in the file."""
    assert [s.id for s in samples] == GOOD_IDS
    got = {s.line: (s.id, s.category) for s in skipped}
    n_good = len(GOOD_IDS)
    for i, (pid, category) in enumerate(BAD.items()):
        assert got[position(n_good + i)] == (str(pid), category), (pid, got[position(n_good + i)])
    assert got[position(n_good + len(BAD))] == (None, "invalid row")
    assert got[position(n_good + len(BAD) + 1)] == ("102", "duplicate id")
    assert len(skipped) == len(BAD) + 2


def test_video_r1_array_every_good_row_loads_and_each_bad_row_has_its_reason(tmp_path):
    path = _write_array(tmp_path, build_video_r1(tmp_path))
    samples, skipped = read_video_r1(path)
    _check(samples, skipped, lambda i: i + 1)
    by_id = {s.id: s for s in samples}
    mc = by_id["101"]
    assert (mc.kind, mc.question, mc.options, mc.answer) == ("video", "Question 101?", ["A. red", "B. blue",
                                                                                         "C. green"], "B")
    assert (mc.problem_type, mc.qtype, mc.rationale, mc.source) == ("multiple choice", "multiple choice",
                                                                    "Because 101.", "fixture")
    assert mc.media == ["./Video-R1-data/clip.mp4"] and mc.frame_hw == (120, 160)
    assert mc.regions == [[3, 10, 10, 50, 40]]
    assert Path(mc.root) == tmp_path.resolve() and mc.media_paths()[0].is_file()
    assert by_id["103"].answer == "HELLO WORLD" and by_id["102"].frame_hw == (100, 200)
    assert {s.problem_type for s in samples} == set(PROBLEM_TYPES)
    minimal = by_id["106"]
    assert (minimal.options, minimal.rationale, minimal.source, minimal.answer) == ([], "", "", "yes")
    reasons = {s.id: s.reason for s in skipped}
    assert reasons["201"] == "unknown problem_type: 'essay'"
    assert reasons["202"] == "missing file: ./Video-R1-data/nowhere.mp4"
    assert skip_counts(skipped)["missing file"] == 1


def test_video_r1_jsonl_with_a_line_that_is_not_json(tmp_path):
    records = build_video_r1(tmp_path)
    lines = [json.dumps(r) for r in records]
    lines.insert(2, "{broken json")
    lines.insert(4, "")  # blank lines are not rows
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    samples, skipped = read_video_r1(path)
    bad_json = [s for s in skipped if s.category == "invalid json"]
    assert [s.line for s in bad_json] == [3]
    skipped = [s for s in skipped if s.category != "invalid json"]
    _check(samples, skipped, lambda i: i + 1 + (i >= 2) + (i >= 3))


def test_read_split_detects_the_schema_and_reads_headers_only(tmp_path, monkeypatch):
    records = build_video_r1(tmp_path / "data")
    path = _write_array(tmp_path / "data", records)
    assert detect_format(path) == "video_r1"

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels decoded at read time")

    monkeypatch.setattr(Image.Image, "load", no_decoding)  # PIL decodes pixels only through load()
    monkeypatch.setattr(av.VideoFrame, "to_image", no_decoding, raising=False)
    for cfg in (DataConfig(dir=str(path)), DataConfig(files={"train": "Video-R1-260k.json"}, dir=str(path.parent)),
                DataConfig(format="video_r1", files={"train": str(path)}, root=str(tmp_path / "data"))):
        samples, skipped = read_split(cfg, "train")
        assert [s.id for s in samples] == GOOD_IDS and len(skipped) == len(BAD) + 2
    with pytest.raises(FileNotFoundError, match="val"):
        read_split(DataConfig(dir=str(path)), "val")


def test_root_resolves_relative_media(tmp_path):
    records = build_video_r1(tmp_path / "media_root")
    elsewhere = tmp_path / "json_here"
    elsewhere.mkdir()
    path = _write_array(elsewhere, records)
    samples, skipped = read_split(DataConfig(dir=str(path)), "train")  # default root: the JSON's folder
    assert samples == [] and {s.category for s in skipped} >= {"missing file"}
    samples, _ = read_split(DataConfig(dir=str(path), root=str(tmp_path / "media_root")), "train")
    assert [s.id for s in samples] == GOOD_IDS


def test_read_samples_carry_no_pixels_and_decode_where_used(tmp_path):
    samples, _ = read_video_r1(_write_array(tmp_path, build_video_r1(tmp_path)))
    for s in samples:
        assert s.images == [] and len(pickle.dumps(s)) < 2000, s.id
    by_id = {s.id: s for s in samples}
    clip = load_frames(by_id["101"], MediaConfig())
    assert len(clip.images) == 4 and clip.timestamps == pytest.approx([0, 1, 2, 3]) and clip.fps == pytest.approx(1)
    assert len(load_frames(by_id["104"], MediaConfig()).images) == 3
    paper = MediaConfig(image=ImageConfig(min_pixels=128 * 28 * 28, max_pixels=5120 * 28 * 28))
    photo = load_frames(by_id["102"], paper).images[0]
    assert photo.width * photo.height >= 128 * 28 * 28  # 200 x 100 scaled up into the paper's image budget
    assert len(pickle.dumps(by_id["101"])) < 2000  # loading frames left the sample as it was


def test_duplicate_ids_can_be_numbered(tmp_path):
    path = _write_array(tmp_path, build_video_r1(tmp_path))
    samples, skipped = read_split(DataConfig(dir=str(path), duplicate_ids="number"), "train")
    assert [s.id for s in samples] == [*GOOD_IDS, "102#2"]
    assert "duplicate id" not in skip_counts(skipped)


def test_skipped_rows_file_counts_per_reason(tmp_path):
    _, skipped = read_video_r1(_write_array(tmp_path, build_video_r1(tmp_path)))
    counts = write_skipped(skipped, tmp_path / "skipped_rows.jsonl", "train")
    rows = [json.loads(line) for line in (tmp_path / "skipped_rows.jsonl").read_text().splitlines()]
    assert len(rows) == len(skipped) and set(rows[0]) == {"split", "line", "id", "reason", "category"}
    assert sum(counts.values()) == len(skipped) and counts["duplicate id"] == 1
    assert set(counts) == {*BAD.values(), "invalid row", "duplicate id"}


def test_an_unparsable_json_array_fails_with_the_file_named(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[{"problem_id": 1, ')
    with pytest.raises(ValueError, match="not a JSON array"):
        read_video_r1(path)
