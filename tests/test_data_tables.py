"""Parquet files and Hugging Face datasets (a save_to_disk directory, load_dataset on a local file) with a column
mapping, embedded image bytes, and bad rows skipped as in the JSON readers."""

from __future__ import annotations

import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_data_readers import BAD, GOOD_IDS, build_video_r1

from ral_dist.config import DataConfig
from ral_dist.data import read_split
from ral_dist.data.readers import detect_format

COLUMNS = {"id": "qid", "question": "text", "answer": "gt", "media": "file", "problem_type": "task"}


def _ours_rows(root) -> list[dict]:
    """Rows of our fields under other column names (COLUMNS), one of them bad (missing file)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (140, 100), (1, 2, 3)).save(root / "img" / "a.png")
    return [
        {"qid": 7, "text": "How many?", "gt": "<answer>2</answer>", "file": "img/a.png", "task": "numerical"},
        {"qid": 8, "text": "Colour?", "gt": "red", "file": "img/a.png", "task": "free-form"},
        {"qid": 9, "text": "Lost?", "gt": "no", "file": "img/lost.png", "task": "free-form"},
    ]


def _check_ours(samples, skipped) -> None:
    assert [(s.id, s.question, s.answer, s.problem_type) for s in samples] == [
        ("7", "How many?", "2", "numerical"), ("8", "Colour?", "red", "free-form")]
    assert samples[0].frame_hw == (100, 140) and samples[0].media_paths()[0].is_file()
    assert [(s.line, s.id, s.category) for s in skipped] == [(3, "9", "missing file")]


def test_parquet_with_a_column_mapping(tmp_path):
    pq.write_table(pa.Table.from_pylist(_ours_rows(tmp_path)), tmp_path / "train.parquet")
    assert detect_format(tmp_path / "train.parquet") == "parquet"
    _check_ours(*read_split(DataConfig(dir=str(tmp_path), columns=COLUMNS), "train"))
    samples, skipped = read_split(DataConfig(dir=str(tmp_path)), "train")  # unmapped: no 'question' column
    assert samples == [] and {s.reason for s in skipped} == {"missing field 'media'"}


def test_parquet_in_the_video_r1_schema_needs_no_mapping(tmp_path):
    records = [r for r in build_video_r1(tmp_path) if isinstance(r, dict)]
    # Parquet needs one type per column: the planted non-string answer and options are left out here
    records = [r for r in records if r["problem_id"] not in (205, 211)]
    for r in records:
        r.setdefault("options", [])
        r.setdefault("process", "")
        r.setdefault("data_source", "")
        r.setdefault("regions", [])
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "train.parquet")
    samples, skipped = read_split(DataConfig(dir=str(tmp_path)), "train")
    assert [s.id for s in samples] == GOOD_IDS
    expected = {str(pid): reason for pid, reason in BAD.items() if pid not in (205, 211)}
    assert {s.id: s.category for s in skipped if s.id != "102"} == expected
    assert samples[0].answer == "B" and samples[0].options == ["A. red", "B. blue", "C. green"]


def test_hf_save_to_disk_with_splits_and_a_mapping(tmp_path):
    rows = _ours_rows(tmp_path)
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                                 "val": datasets.Dataset.from_list(rows[:1])})
    data.save_to_disk(str(tmp_path / "saved"))
    cfg = DataConfig(dir=str(tmp_path / "saved"), columns=COLUMNS, root=str(tmp_path))
    assert detect_format(tmp_path / "saved") == "hf"
    _check_ours(*read_split(cfg, "train"))
    val, _ = read_split(cfg, "val")
    assert [s.id for s in val] == ["7"]
    with pytest.raises(FileNotFoundError, match="test"):
        read_split(cfg, "test")


def test_hf_embedded_images_are_written_once_and_read_by_path(tmp_path, monkeypatch):
    monkeypatch.setenv("RAL_DIST_CACHE", str(tmp_path / "cache"))
    buf = io.BytesIO()
    Image.new("RGB", (150, 90), (9, 8, 7)).save(buf, format="PNG")
    rows = [{"id": "e1", "question": "Q?", "answer": "A", "image": {"bytes": buf.getvalue(), "path": None}},
            {"id": "e2", "question": "Q?", "answer": "A", "image": {"bytes": buf.getvalue(), "path": None}}]
    features = datasets.Features({"id": datasets.Value("string"), "question": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp_path / "saved"))
    samples, skipped = read_split(DataConfig(dir=str(tmp_path / "saved"), columns={"media": "image"}), "train")
    assert skipped == [] and [s.frame_hw for s in samples] == [(90, 150), (90, 150)]
    assert samples[0].media == samples[1].media and samples[0].media_paths()[0].suffix == ".png"
    assert len(list((tmp_path / "cache" / "media").iterdir())) == 1


def test_hf_load_dataset_on_a_local_json_file(tmp_path):
    (tmp_path / "rows.json").write_text(json.dumps(_ours_rows(tmp_path)))
    cfg = DataConfig(format="hf", files={"train": "rows.json"}, dir=str(tmp_path), columns=COLUMNS)
    _check_ours(*read_split(cfg, "train"))


def test_columns_must_name_known_fields():
    with pytest.raises(ValueError, match="unknown fields"):
        DataConfig(columns={"questionn": "problem"})
