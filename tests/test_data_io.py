"""JSONL + PNG dataset writing and tolerant reading."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ral_dist.data import (
    QTYPES,
    RECORD_FIELDS,
    GroundedVQAConfig,
    generate,
    generate_dataset,
    read_dataset,
    write_dataset,
)


@pytest.fixture(scope="module")
def samples():
    return generate(GroundedVQAConfig(seed=4, qtype_weights={q: 1.0 for q in QTYPES}, background="noise"),
                    "train", 24)


def _same(a, b) -> None:
    for f in ("id", "kind", "question", "answer", "qtype", "regions", "rationale", "layout_key", "media", "frame_hw"):
        assert getattr(a, f) == getattr(b, f), f
    assert len(a.images) == len(b.images)
    for x, y in zip(a.images, b.images, strict=True):
        assert y.mode == "RGB" and np.array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(tmp_path, samples):
    path = write_dataset(samples, tmp_path, "train")
    assert path == tmp_path / "train.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(samples)
    for row in rows:  # flat rows, always the same fields and types
        assert tuple(row) == RECORD_FIELDS
        assert isinstance(row["answer"], str) and isinstance(row["media"], list)
        assert all(isinstance(r, list) and len(r) == 5 and all(isinstance(v, int) for v in r) for r in row["regions"])
        assert all((tmp_path / p).is_file() for p in row["media"])
    back, skipped = read_dataset(tmp_path, "train")
    assert skipped == []
    assert len(back) == len(samples)
    for a, b in zip(samples, back, strict=True):
        _same(a, b)
    lazy, skipped = read_dataset(tmp_path, "train", load_images=False)
    assert skipped == [] and lazy[0].images == []
    assert np.array_equal(np.asarray(lazy[0].get_images()[0]), np.asarray(samples[0].images[0]))
    assert lazy[0].frame_hw == (112, 112)


def test_generate_dataset_all_splits(tmp_path):
    cfg = GroundedVQAConfig(seed=9, qtype_weights={"color_at": 1.0, "direction": 1.0})
    paths = generate_dataset(cfg, tmp_path, {"train": 6, "val": 3, "test": 3})
    assert set(paths) == {"train", "val", "test"}
    assert (tmp_path / "generator_config.json").is_file()
    keys = {}
    for split, n in (("train", 6), ("val", 3), ("test", 3)):
        got, skipped = read_dataset(tmp_path, split)
        assert len(got) == n and not skipped
        keys[split] = {s.layout_key for s in got}
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"])


def test_bad_rows_are_skipped_with_reasons(tmp_path, samples):
    good = samples[:4]
    path = write_dataset(good, tmp_path, "train")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    # corrupt one good row's PNG, delete another's
    corrupt = tmp_path / rows[1]["media"][0]
    corrupt.write_bytes(corrupt.read_bytes()[:60] + b"\x00garbage" * 10)
    for p in rows[2]["media"]:
        (tmp_path / p).unlink()
    no_answer = dict(rows[0], id="no-answer")
    del no_answer["answer"]
    bad_regions = dict(rows[0], id="bad-regions", regions=[[0, 10, 10, 5, 5]])
    out_of_frame = dict(rows[0], id="out-of-frame", regions=[[0, 0, 0, 500, 10]])
    text_img = tmp_path / "images" / "notes.png"
    text_img.write_text("not a png")
    not_png = dict(rows[0], id="not-png", media=["images/notes.png"])
    # a row of the format before issue 18: frames under "images", no other optional field
    minimal = {"id": "minimal", "images": rows[0]["media"][0], "question": "Q?", "answer": 3}
    lines = [json.dumps(r) for r in rows] + [
        "{not json",
        json.dumps(no_answer),
        json.dumps(bad_regions),
        json.dumps(out_of_frame),
        json.dumps(not_png),
        json.dumps(rows[0]),  # duplicate id
        json.dumps(["a", "list"]),
        "",
        json.dumps(minimal),
        json.dumps(dict(rows[3], id="both", images=rows[3]["media"])),
    ]
    path.write_text("\n".join(lines) + "\n")
    got, skipped = read_dataset(tmp_path, "train")
    reasons = {(s.line, s.id): s.reason for s in skipped}
    assert [s.id for s in got] == [rows[0]["id"], rows[3]["id"], "minimal"]
    assert reasons[(2, rows[1]["id"])].startswith("unreadable image")
    assert reasons[(3, rows[2]["id"])].startswith("missing file: images/")
    assert reasons[(5, None)].startswith("invalid json")
    assert reasons[(6, "no-answer")] == "missing field 'answer'"
    assert reasons[(7, "bad-regions")].startswith("invalid field 'regions'")
    assert reasons[(8, "out-of-frame")].startswith("invalid field 'regions'")
    assert reasons[(9, "not-png")].startswith("unreadable image")
    assert reasons[(10, rows[0]["id"])] == "duplicate id"
    assert reasons[(11, None)].startswith("invalid row")
    assert reasons[(14, "both")].startswith("invalid row: both 'media' and 'images'")
    assert len(skipped) == 10
    _same(samples[0], got[0])
    m = got[2]  # optional fields default
    assert (m.kind, m.qtype, m.regions, m.rationale, m.layout_key, m.answer) == ("image", "unknown", [], "", "", "3")
    assert m.images[0].mode == "RGB"
    # the lazy reader finds the same bad files
    _, lazy_skipped = read_dataset(tmp_path, "train", load_images=False)
    assert {(s.line, s.category) for s in lazy_skipped} >= {(2, "unreadable image"), (3, "missing file")}


def test_missing_jsonl_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_dataset(tmp_path, "val")
