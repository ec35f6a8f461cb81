"""Model adapters: processors that match the official ones, positions of visual/question tokens, save/load."""

import json

import pytest
import torch
from PIL import Image
from transformers import Idefics3Processor

from ral_dist.models import VisualPrompt, adapter_for_checkpoint, get_adapter
from ral_dist.models.qwen_vl import QwenVLAdapter


def _img(w=112, h=112, color="red"):
    return Image.new("RGB", (w, h), color)


def test_qwen_processor_expands_pads_to_grid_tokens():
    adapter = QwenVLAdapter()
    proc = adapter.build_processor()
    batch = adapter.encode(proc, [VisualPrompt([_img(112, 84)], "What colour is it?"),
                                  VisualPrompt([_img()] * 3, "Which way?", kind="video")])
    ids = batch.inputs["input_ids"]
    # 112x84 → 8x6 patches of 14 → 4x3 merged tokens; video: 3 frames pad to 4 → t=2, 8x8 patches → 2x4x4
    assert batch.inputs["image_grid_thw"].tolist() == [[1, 6, 8]]
    assert batch.inputs["video_grid_thw"].tolist() == [[2, 8, 8]]
    assert batch.visual_grids == [(1, 3, 4), (2, 4, 4)]
    assert (ids[0] == proc.image_token_id).sum() == 12
    assert (ids[1] == proc.video_token_id).sum() == 32
    assert batch.inputs["pixel_values"].shape == (48, 3 * 2 * 14 * 14)
    assert batch.inputs["pixel_values_videos"].shape == (128, 3 * 2 * 14 * 14)
    mm = batch.inputs["mm_token_type_ids"]
    assert torch.equal(mm == 1, ids == proc.image_token_id) and torch.equal(mm == 2, ids == proc.video_token_id)
    assert batch.visual_positions[0].tolist() == torch.nonzero(ids[0] == proc.image_token_id).flatten().tolist()
    for b, q in enumerate(["What colour is it?", "Which way?"]):
        assert proc.tokenizer.decode(ids[b, batch.question_positions[b]]) == q


def test_qwen_mrope_times_each_video_by_its_own_sampling_rate():
    """second_per_grid_ts = temporal patch / the fps a video's frames were sampled at (a constant only when the
    rate is unknown); the model's temporal position ids follow it."""
    adapter = QwenVLAdapter()
    proc = adapter.build_processor()
    prompts = [VisualPrompt([_img()] * 4, "Fast?", kind="video", fps=2.0), VisualPrompt([_img()], "Image?"),
               VisualPrompt([_img()] * 4, "Slow?", kind="video", fps=0.5),
               VisualPrompt([_img()] * 4, "Unknown?", kind="video")]
    batch = adapter.encode(proc, prompts)
    assert batch.inputs["second_per_grid_ts"].tolist() == [1.0, 4.0, 2.0 / proc.fps]
    model, _ = adapter.build_tiny()
    positions, _ = model.model.get_rope_index(
        batch.inputs["input_ids"], batch.inputs["mm_token_type_ids"], image_grid_thw=batch.inputs["image_grid_thw"],
        video_grid_thw=batch.inputs["video_grid_thw"], second_per_grid_ts=batch.inputs["second_per_grid_ts"],
        attention_mask=batch.inputs["attention_mask"])
    # the temporal index of the second token-frame of each video: one tick per second, scaled by the config
    tick = model.config.vision_config.tokens_per_second
    for b, seconds in ((0, 1.0), (2, 4.0)):
        t = positions[0, b, batch.visual_positions[b]].reshape(2, -1)[:, 0]
        assert (t[1] - t[0]).item() == int(seconds * tick), (b, t.tolist())


def test_qwen_video_patch_layout_matches_official_order():
    """Patch (t, row, col) of the flattened video holds the pixels of frames 2t..2t+1 at that place."""
    proc = QwenVLAdapter().build_processor()
    frames = [Image.new("RGB", (56, 56), (40 * i, 0, 0)) for i in range(4)]
    values, grid = proc.process_video(frames)
    t, gh, gw = grid[0].tolist()
    assert (t, gh, gw) == (2, 4, 4)
    patches = values.view(t, gh * gw, 3, 2, 14, 14)
    ip = proc.image_processor
    for k in range(4):  # red channel of frame k, normalised as the image processor does
        expected = (40 * k / 255 - ip.image_mean[0]) / ip.image_std[0]
        assert torch.allclose(patches[k // 2, :, 0, k % 2], torch.full((16, 14, 14), expected), atol=1e-5)


def test_idefics3_ids_equal_official_processor():
    adapter = get_adapter("idefics3")
    proc = adapter.build_processor()
    prompt = VisualPrompt([_img()], "What colour is the square?",
                          text="What colour is the square? Answer briefly.")
    batch = adapter.encode(proc, [prompt])
    text = proc.tokenizer.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt.user_text}]}], tokenize=False, add_generation_prompt=True)
    official = Idefics3Processor.__call__(proc, images=[[_img()]], text=[text], return_tensors="pt")
    assert torch.equal(official["input_ids"][0], batch.inputs["input_ids"][0])
    assert torch.equal(official["pixel_values"], batch.inputs["pixel_values"])
    assert len(batch.visual_positions[0]) == proc.image_seq_len == 16
    assert proc.tokenizer.decode(batch.inputs["input_ids"][0, batch.question_positions[0]]) == prompt.question


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "idefics3"])
def test_tiny_model_round_trips_through_safetensors(family, tmp_path):
    adapter = get_adapter(family)
    proc = adapter.build_processor()
    config = adapter.tiny_config(proc)
    text_cfg = config.get_text_config()
    assert text_cfg.hidden_size // text_cfg.num_attention_heads >= 32 or getattr(text_cfg, "head_dim", 0) >= 32
    model, proc = adapter.build_tiny(seed=3)
    model.save_pretrained(tmp_path, safe_serialization=True)
    proc.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not list(tmp_path.glob("*.bin"))
    assert type(adapter_for_checkpoint(tmp_path)) is type(adapter)
    loaded, proc2 = adapter.load(tmp_path)
    batch = adapter.encode(proc2, [VisualPrompt([_img()], "Is there a circle?")])
    assert torch.equal(batch.inputs["input_ids"], adapter.encode(proc, [VisualPrompt([_img()],
                                                                                     "Is there a circle?")]).inputs["input_ids"])
    with torch.no_grad():
        assert torch.allclose(model(**batch.inputs).logits, loaded(**batch.inputs).logits, atol=1e-6)
    proc2.save_pretrained(tmp_path / "again")  # a loaded processor saves again (a trained checkpoint of a loaded model)
    assert adapter.load_processor(tmp_path / "again").tokenizer.get_vocab() == proc.tokenizer.get_vocab()


def test_unknown_family_and_missing_checkpoint_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown model family 'llava'"):
        get_adapter("llava")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        adapter_for_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="unknown model family 'bert'"):
        adapter_for_checkpoint(tmp_path)


def test_checkpoint_that_does_not_match_the_model_is_a_clear_error(tmp_path):
    adapter = get_adapter("qwen2_5_vl")
    model, proc = adapter.build_tiny(seed=0)
    model.save_pretrained(tmp_path, safe_serialization=True)
    proc.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 384  # the weights on disk no longer fit this architecture
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises((ValueError, RuntimeError), match="mismatched"):
        adapter.load(tmp_path)
    other, _ = get_adapter("idefics3").build_tiny()
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        other.load_state_dict(model.state_dict(), strict=True)  # what a rollout worker's weight sync does


def test_tiny_qwen_rotary_tells_neighbouring_grid_cells_apart():
    """mrope gives the h and w sections the slowest rotary frequencies; in the tiny model (head_dim 32) they must
    still turn a visible angle per position, else a 4 x 4 visual grid is position-blind (README, issue 4)."""
    model, _ = QwenVLAdapter().build_tiny()
    inv_freq = model.model.language_model.rotary_emb.inv_freq  # rad per position, fastest pair first
    t, h, w = model.config.text_config.rope_parameters["mrope_section"]
    assert len(inv_freq) == t + h + w
    assert inv_freq[t:].min() > 0.3


def test_sft_cache_key_follows_the_tiny_architecture(monkeypatch):
    """A change of the tiny defaults in code retrains the cached SFT checkpoint instead of reusing the old one."""
    from pathlib import Path

    from ral_dist.config import SFTJobConfig, load_config
    from ral_dist.models import qwen_vl
    from ral_dist.sft.driver import cached_checkpoint_dir

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(SFTJobConfig, root / "jobs" / "configs" / "sft_tiny_cpu.yaml")
    key = cached_checkpoint_dir(cfg)
    assert cached_checkpoint_dir(cfg) == key
    monkeypatch.setattr(qwen_vl, "TINY_ROPE_THETA", 10000.0)
    assert cached_checkpoint_dir(cfg) != key
