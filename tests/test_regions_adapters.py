"""Ground-truth regions land on the visual tokens that actually see the object, for both adapters."""

import torch
from PIL import Image, ImageDraw

from ral_dist.data import region_token_mask
from ral_dist.models import VisualPrompt, get_adapter

BOX = (60, 4, 104, 50)  # a red square in the top-right cell of a 112 px canvas (x0, y0, x1, y1 exclusive)


def _planted():
    img = Image.new("RGB", (112, 112), "white")
    ImageDraw.Draw(img).rectangle((BOX[0], BOX[1], BOX[2] - 1, BOX[3] - 1), fill=(255, 0, 0))
    return img


def _red_tokens_qwen(values: torch.Tensor, grid_t: int, gh: int, gw: int, merge: int, ip) -> torch.Tensor:
    """Which merged tokens contain red pixels, read from the official flattened pixel layout."""
    patches = values.view(grid_t, gh // merge, gw // merge, merge, merge, 3, -1)
    green = patches[:, :, :, :, :, 1]  # the green channel is low only on the red object
    low = (ip.image_std[1] * green + ip.image_mean[1]) < 0.5
    return low.flatten(3).any(-1).reshape(-1)


def test_qwen_region_covers_exactly_the_tokens_that_contain_the_object():
    adapter = get_adapter("qwen2_5_vl")
    proc = adapter.build_processor()
    batch = adapter.encode(proc, [VisualPrompt([_planted()], "What colour?")])
    t, gh, gw = batch.inputs["image_grid_thw"][0].tolist()
    seen = _red_tokens_qwen(batch.inputs["pixel_values"], t, gh, gw, proc.merge_size, proc.image_processor)
    mask = region_token_mask([[0, *BOX]], 1, (112, 112), batch.visual_grids[0])
    assert mask.tolist() == seen.tolist() and mask.sum() == 4  # 2x2 tokens of the top-right quadrant
    assert len(batch.visual_positions[0]) == mask.numel()


def test_qwen_video_temporal_patching_maps_frames_to_token_frames():
    adapter = get_adapter("qwen2_5_vl")
    proc = adapter.build_processor()
    blank = Image.new("RGB", (112, 112), "white")
    frames = [blank, blank, blank, _planted()]  # the object appears in frame 3 → token-frame 1 (tp = 2)
    batch = adapter.encode(proc, [VisualPrompt(frames, "When?", kind="video")])
    t, gh, gw = batch.inputs["video_grid_thw"][0].tolist()
    seen = _red_tokens_qwen(batch.inputs["pixel_values_videos"], t, gh, gw, proc.merge_size, proc.image_processor)
    mask = region_token_mask([[3, *BOX]], 4, (112, 112), batch.visual_grids[0], temporal_patch=2)
    assert mask.tolist() == seen.tolist() and mask[:16].sum() == 0 and mask[16:].sum() == 4


def test_idefics3_region_covers_the_pixel_shuffled_tokens_of_the_object():
    adapter = get_adapter("idefics3")
    proc = adapter.build_processor()
    batch = adapter.encode(proc, [VisualPrompt([_planted()], "What colour?")])
    t, rows, cols = batch.visual_grids[0]
    pixels = batch.inputs["pixel_values"][0, 0]  # [3, 112, 112] normalised
    patch = 112 // rows  # a token after the 2x2 pixel shuffle covers a 28 px square
    green = pixels[1].unfold(0, patch, patch).unfold(1, patch, patch)  # [rows, cols, patch, patch]
    seen = (green < 0).flatten(2).any(-1).reshape(-1)
    mask = region_token_mask([[0, *BOX]], 1, (112, 112), batch.visual_grids[0])
    assert mask.tolist() == seen.tolist() and mask.sum() == 4


def test_idefics3_pixel_shuffle_orders_tokens_row_major():
    """The connector's token (i, j) gathers patches rows 2i..2i+1, cols 2j..2j+1: the order the mask assumes."""
    adapter = get_adapter("idefics3")
    model, _ = adapter.build_tiny()
    side, dim = 8, 4
    for r, c in [(0, 7), (5, 2), (7, 7)]:
        x = torch.zeros(1, side * side, dim)
        x[0, r * side + c] = 1.0
        out = model.model.connector.pixel_shuffle(x, 2)  # [1, 16, dim * 4]
        token = int(torch.nonzero(out[0].abs().sum(-1)).flatten())
        assert token == (r // 2) * (side // 2) + c // 2
