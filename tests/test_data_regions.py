"""Region → visual-token masks and the on-target attention mass."""

from __future__ import annotations

import math

import pytest
import torch

from ral_dist.data import (
    Scene,
    SceneObject,
    ask,
    box_in_cell,
    on_target_mass,
    region_token_mask,
    sample_from_scene,
    target_fraction,
)


def _idx(mask: torch.Tensor) -> list[int]:
    return torch.nonzero(mask).flatten().tolist()


def _planted_top_left() -> list[list[int]]:
    box = box_in_cell(112, 2, 0, 0, 40, 0.5, 0.5)  # 40 px square, centred in the 56 px cell: (8, 8, 48, 48)
    assert box == (8, 8, 48, 48)
    scene = Scene.image(112, 2, [SceneObject("circle", "red", box)])
    s = sample_from_scene(scene, ask(scene, "color_at", cell=(0, 0)), "p-0")
    return s.regions


def test_planted_object_4x4_and_2x2_tokens():
    regions = _planted_top_left()
    m = region_token_mask(regions, 1, (112, 112), (1, 4, 4))
    assert m.dtype == torch.bool and m.shape == (16,)
    assert _idx(m) == [0, 1, 4, 5]  # 28 px tokens: x, y in [8, 48) hit tokens 0 and 1 on both axes
    assert _idx(region_token_mask(regions, 1, (112, 112), (1, 2, 2))) == [0]
    assert target_fraction(m) == 0.25


def test_exclusive_edges_and_other_places():
    assert _idx(region_token_mask([[0, 0, 0, 28, 28]], 1, (112, 112), (1, 4, 4))) == [0]
    assert _idx(region_token_mask([[0, 0, 0, 29, 28]], 1, (112, 112), (1, 4, 4))) == [0, 1]
    # bottom-right object in a 2x2 grid, 4x4 tokens
    assert _idx(region_token_mask([[0, 70, 60, 100, 110]], 1, (112, 112), (1, 4, 4))) == [10, 11, 14, 15]
    # non-square frame: 60 x 120 (h x w), 2 x 3 tokens of 30 x 40
    assert _idx(region_token_mask([[0, 41, 31, 79, 59]], 1, (60, 120), (1, 2, 3))) == [4]
    assert _idx(region_token_mask([], 1, (112, 112), (1, 4, 4))) == []


def test_video_temporal_patching():
    # 4 frames, tp=2 -> 2 token-frames; a box in frame 3 lands in token-frame 1 only
    m = region_token_mask([[3, 0, 0, 10, 10]], 4, (112, 112), (2, 2, 2), temporal_patch=2)
    assert _idx(m) == [4]
    m = region_token_mask([[0, 60, 0, 70, 10], [1, 60, 0, 70, 10]], 4, (112, 112), (2, 2, 2), temporal_patch=2)
    assert _idx(m) == [1]
    # tp=1: one token-frame per frame
    assert _idx(region_token_mask([[2, 60, 60, 70, 70]], 4, (112, 112), (4, 2, 2))) == [11]
    # 3 frames, tp=2: the last frame is repeated to fill token-frame 1
    assert _idx(region_token_mask([[2, 0, 0, 5, 5]], 3, (112, 112), (2, 2, 2), temporal_patch=2)) == [4]
    # image with tp=2 (Qwen duplicates the frame): one token-frame
    assert _idx(region_token_mask([[0, 0, 0, 5, 5]], 1, (112, 112), (1, 2, 2), temporal_patch=2)) == [0]


def test_mask_argument_errors():
    with pytest.raises(ValueError):
        region_token_mask([[0, 0, 0, 5, 5]], 4, (112, 112), (4, 2, 2), temporal_patch=2)  # t should be 2
    with pytest.raises(ValueError):
        region_token_mask([[4, 0, 0, 5, 5]], 4, (112, 112), (4, 2, 2))  # frame out of range
    with pytest.raises(ValueError):
        region_token_mask([[0, 0, 5, 5]], 1, (112, 112), (1, 2, 2))


def test_on_target_mass_exact():
    mask = torch.tensor([True, False, False, True])
    attn = torch.tensor([[0.2, 0.3, 0.5, 0.0],    # 0.2 / 1.0
                         [0.0, 0.0, 0.0, 0.0],    # skipped
                         [1.0, 1.0, 0.0, 0.0],    # 1 / 2
                         [0.05, 0.0, 0.0, 0.05]])  # 0.1 / 0.1 (not renormalised rows)
    assert on_target_mass(attn, mask) == pytest.approx((0.2 + 0.5 + 1.0) / 3, abs=1e-12)
    assert on_target_mass(torch.tensor([0.25, 0.25, 0.25, 0.25]), mask) == pytest.approx(0.5)
    assert math.isnan(on_target_mass(torch.zeros(2, 4), mask))
    with pytest.raises(ValueError):
        on_target_mass(torch.ones(1, 3), mask)
