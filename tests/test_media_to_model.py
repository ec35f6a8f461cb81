"""From a Video-R1 row on disk to what the model receives: the frames decoded at data.video.fps, the visual-token
count each adapter gives them, and the seconds per temporal patch Qwen's mrope uses."""

import math

import pytest

from ral_dist.config import DataConfig
from ral_dist.data.export import export_synthetic
from ral_dist.data.readers import read_split
from ral_dist.data.vqa_config import GroundedVQAConfig
from ral_dist.models import get_adapter
from ral_dist.models.prompting import visual_prompt


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("video_r1")
    export_synthetic(GroundedVQAConfig.at_stage(4, fraction_video=0.5, seed=5), out, {"train": 12}, fps=1.0)
    samples, skipped = read_split(DataConfig(format="video_r1", dir=str(out)), "train")
    assert skipped == []
    video = next(s for s in samples if s.kind == "video" and s.media[0].endswith(".mp4"))
    image = next(s for s in samples if s.kind == "image")
    return video, image


@pytest.mark.parametrize("fps", [1.0, 2.0])
def test_video_frames_tokens_and_timing(rows, fps):
    video, _ = rows
    data = DataConfig(video={"fps": fps})
    prompt = visual_prompt(video, data)
    # the exporter writes frame k at k s: sampled at 1 fps the 4 scene frames come back; asked for 2 fps, the file
    # still holds 4 frames, and the rate reported is the one achieved
    assert len(prompt.frames) == 4 and prompt.fps == pytest.approx(1.0)
    assert prompt.frames[0].size == (112, 112)

    qwen = get_adapter("qwen2_5_vl")
    processor = qwen.build_processor()
    batch = qwen.encode(processor, [prompt])
    t, h, w = batch.inputs["video_grid_thw"][0].tolist()
    assert (t, h, w) == (math.ceil(4 / 2), 112 // 14, 112 // 14)
    assert len(batch.visual_positions[0]) == t * h * w // 4 == 32 and batch.frame_counts == [4]
    assert batch.inputs["second_per_grid_ts"].tolist() == [2 / prompt.fps]

    idefics = get_adapter("idefics3")
    iproc = idefics.build_processor()
    ibatch = idefics.encode(iproc, [prompt])
    assert len(ibatch.visual_positions[0]) == 4 * iproc.image_seq_len and ibatch.visual_grids == [(4, 4, 4)]


def test_an_image_row_within_its_pixel_budget(rows):
    _, image = rows
    small = visual_prompt(image, DataConfig())
    assert small.frames[0].size == (112, 112) and small.fps is None
    paper = visual_prompt(image, DataConfig(image={"min_pixels": 128 * 28 * 28, "max_pixels": 5120 * 28 * 28}))
    side = paper.frames[0].size[0]
    assert side * side >= 128 * 28 * 28  # scaled up into the paper's budget: more visual tokens
    qwen = get_adapter("qwen2_5_vl")
    batch = qwen.encode(qwen.build_processor(), [paper])
    _, h, w = batch.inputs["image_grid_thw"][0].tolist()
    assert len(batch.visual_positions[0]) == h * w // 4 > 16
