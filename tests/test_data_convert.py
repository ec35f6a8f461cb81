"""The exporter (synthetic task → Video-R1 schema with mp4 files) and the converter (Video-R1 → our JSONL), through
their command line: the output reads back with the same questions, answers, regions and frames."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from test_data_readers import BAD, GOOD_IDS, build_video_r1

from ral_dist.config import DataConfig
from ral_dist.data import QTYPES, GroundedVQAConfig, MediaConfig, generate, load_frames, read_split
from ral_dist.data.convert import main
from ral_dist.data.export import export_synthetic
from ral_dist.data.video_r1 import read_video_r1

TASK = GroundedVQAConfig(seed=5, qtype_weights={q: 1.0 for q in QTYPES}, fraction_video=0.5)
SIZES = {"train": 24, "val": 6}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    return out, export_synthetic(TASK, out, SIZES)


def test_export_reads_back_with_the_same_questions_answers_and_regions(exported):
    out, paths = exported
    ids = []
    for split, n in SIZES.items():
        records = json.loads(paths[split].read_text())
        assert all(isinstance(r["problem_id"], int) for r in records)
        ids += [r["problem_id"] for r in records]
        back, skipped = read_video_r1(paths[split])
        assert skipped == [] and len(back) == n
        for original, s in zip(generate(TASK, split, n), back, strict=True):
            assert (s.question, s.regions, s.kind, s.source) == (original.question, original.regions,
                                                                 original.kind, "ral_dist.grounded_vqa")
            if s.problem_type == "multiple choice":
                letter = {o.split(". ", 1)[0]: o.split(". ", 1)[1] for o in s.options}
                assert letter[s.answer] == original.answer and len(s.options) == 4
            else:
                assert s.answer == original.answer and s.options == []
            assert s.rationale == original.rationale
    assert len(ids) == len(set(ids))  # unique across splits
    types = Counter(r["problem_type"] for r in json.loads(paths["train"].read_text()))
    assert set(types) == {"multiple choice", "numerical", "free-form"}


def test_exported_mp4_decodes_at_1_fps_to_the_scene_frames(exported):
    out, paths = exported
    back, _ = read_video_r1(paths["train"])
    videos = [(o, s) for o, s in zip(generate(TASK, "train", SIZES["train"]), back, strict=True)
              if s.kind == "video"]
    assert videos and all(s.media[0].endswith(".mp4") for _, s in videos)
    for original, s in videos:
        frames = load_frames(s, MediaConfig())
        assert len(frames.images) == original.n_frames and frames.fps == pytest.approx(1.0)
        assert frames.timestamps == pytest.approx(list(range(original.n_frames)))
        for a, b in zip(original.images, frames.images, strict=True):
            assert np.array_equal(np.asarray(a), np.asarray(b))


def test_export_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ral_dist.data.convert", "--export-synthetic", "--out",
                           str(tmp_path), "--sizes", "train=4,val=2", "--seed", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    samples, skipped = read_split(DataConfig(dir=str(tmp_path)), "val")
    assert len(samples) == 2 and skipped == []


def test_convert_video_r1_to_our_jsonl(tmp_path, capsys):
    src = tmp_path / "src"
    records = build_video_r1(src)
    (src / "rl.json").write_text(json.dumps(records))
    out = tmp_path / "out"
    assert main(["--from", "video_r1", "--json", str(src / "rl.json"), "--root", str(src), "--out", str(out)]) == 0
    assert "missing file" in capsys.readouterr().out
    direct, _ = read_video_r1(src / "rl.json")
    converted, skipped = read_split(DataConfig(dir=str(out)), "train")  # detected as ours; media via the root
    assert skipped == [] and [s.id for s in converted] == GOOD_IDS
    for a, b in zip(direct, converted, strict=True):
        assert a.to_record() == b.to_record() and a.frame_hw == b.frame_hw
    reasons = [json.loads(line) for line in (out / "train.skipped.jsonl").read_text().splitlines()]
    assert {r["category"] for r in reasons} == {*BAD.values(), "invalid row", "duplicate id"}


def test_convert_reports_a_missing_input(tmp_path, capsys):
    assert main(["--from", "video_r1", "--json", str(tmp_path / "nope.json"), "--out", str(tmp_path)]) == 1
    assert "nope.json" in capsys.readouterr().err
