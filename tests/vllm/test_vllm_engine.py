"""The vllm rollout engine in one RolloutWorker (one vLLM engine for the module): exact prompt tokens, attention
maps equal to a direct capture, the log-prob mismatch, weights pushed in place and pushed back."""

import math

import pytest
import torch

from ral_dist.actors.rollout_worker import RolloutWorker
from ral_dist.config import RLJobConfig
from ral_dist.data import GroundedVQAConfig
from ral_dist.data import generate as generate_samples
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import forward_responses
from ral_dist.models.prompting import visual_prompt

CONFIG = {
    "model": {"family": "idefics3", "checkpoint": None},
    "data": {"task": {"seed": 3, "fraction_video": 0.5}, "prompt": {"mode": "think"}},
    "rollout": {"engine": "vllm", "group_size": 3, "max_new_tokens": 8, "temperature": 0.9,
                "attention_wire_dtype": "float32", "vllm": {"sync_retries": 1, "sync_timeout_s": 60}},
}
MAX_NEW = 8


@pytest.fixture(scope="module")
def worker():
    w = RolloutWorker(0, RLJobConfig.model_validate(CONFIG).model_dump(mode="json"))
    yield w
    w.vllm_engine.shutdown()


@pytest.fixture(scope="module")
def samples():
    out = generate_samples(GroundedVQAConfig(seed=3, fraction_video=0.5), "train", 6)
    picked = [next(s for s in out if s.kind == "image"), next(s for s in out if s.kind == "video")]
    assert len(picked[1].get_images()) > 1  # video frames travel as several images
    return picked


def direct_replica(worker):
    """A separate transformers model with the worker's current weights, capture on."""
    model, _ = worker.adapter.build_tiny(seed=123)
    model.load_state_dict(worker.model.state_dict())
    use_capture_attention(model)
    return model.eval()


def test_rollout_maps_and_logprobs_equal_a_direct_capture(worker, samples):
    trajs = worker._sample(0, samples, [0, 1])  # checks vLLM's prompt tokens == our encoding, or raises
    assert len(trajs) == 2 * 3 and {t.prompt.group for t in trajs} == {0, 1}
    model = direct_replica(worker)
    pad = worker.processor.tokenizer.pad_token_id
    for t in trajs:
        single = worker.adapter.encode(worker.processor, [visual_prompt(t.sample, worker.cfg.data)])
        n = len(t.response.ids)
        assert single.prompt_len == t.prompt.length
        with torch.no_grad():
            fwd = forward_responses(worker.adapter, model, single, t.response.ids[None],
                                    torch.ones(1, n, dtype=torch.long), pad, temperature=0.9)
        attn = fwd.attention
        assert t.behaviour.attention.dtype == torch.float32 and t.behaviour.attention.shape == attn[0].shape
        assert (t.behaviour.attention - attn[0]).abs().max() <= 1e-5
        assert torch.allclose(t.behaviour.logprobs, fwd.logprobs[0], atol=1e-5)
    # vLLM's own log-probs against the replica's, on the same sampling distribution (fp32: numerics only)
    stats = worker.vllm_engine.stats
    assert stats["logprob_tokens"] == sum(len(t.response.ids) for t in trajs)
    assert stats["logprob_abs_diff_sum"] / stats["logprob_tokens"] < 1e-4 and stats["logprob_abs_diff_max"] < 1e-3


def test_sync_moves_the_engine_and_pushing_the_old_weights_back_restores_it(worker, samples):
    prompt = visual_prompt(samples[0], worker.cfg.data)
    before = worker.vllm_engine.greedy_parity(prompt, MAX_NEW)
    assert before["match"], before
    old = {k: v.clone() for k, v in worker.model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    new = {k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in old.items()}

    worker.update_weights(1, new)
    after = worker.vllm_engine.greedy_parity(prompt, MAX_NEW)  # same image: a stale encoder cache would show here
    assert after["match"], after
    assert after["vllm"] != before["vllm"]  # the new weights really reached the engine
    assert math.isfinite(worker.param_digest())  # the job's verify_sync path: parity on the fixed prompt

    worker.update_weights(2, old)
    restored = worker.vllm_engine.greedy_parity(prompt, MAX_NEW)
    assert restored["vllm"] == before["vllm"] and restored["match"]


def test_a_bad_sync_is_retried_then_fails_loudly_and_the_engine_still_serves(worker, samples):
    state = worker.model.state_dict()
    broken = {k: v for k, v in state.items() if not k.endswith("lm_head.weight")}
    with pytest.raises(RuntimeError, match="failed after 2 attempts.*not in the new weights"):
        worker.vllm_engine.load_state_dict(9, broken)
    worker.update_weights(3, state)
    prompt = visual_prompt(samples[1], worker.cfg.data)
    assert worker.vllm_engine.greedy_parity(prompt, MAX_NEW)["match"]


def test_attention_on_learner_returns_vllm_logprobs_and_no_maps(worker, samples):
    prompts = [visual_prompt(s, worker.cfg.data) for s in samples]
    gen = worker.vllm_engine.generate(prompts, num_samples=2, max_new_tokens=MAX_NEW, seed=1, replica=False,
                                 capture_question=True)
    assert gen.attention.shape[:2] == gen.response_ids.shape and gen.attention.isnan().all()
    assert (gen.logprobs[gen.response_mask.bool()] < 0).all() and worker.vllm_engine.stats == {}


def test_the_nccl_mode_fails_early_without_cuda_and_gloo_selects_its_engine():
    """NCCL needs CUDA: without it the engine refuses at once, naming the setting. The gloo twin registers its
    transfer engine with vLLM and rides the worker extension into vLLM's worker process."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    from ral_dist.config import ConfigError
    from ral_dist.vllm.broadcast_sync import GLOO_BACKEND, GlooWeightTransferEngine, llm_kwargs
    from ral_dist.vllm.engine import VLLMEngine

    assert not torch.cuda.is_available()
    with pytest.raises(ConfigError, match=r"rollout.vllm.weight_sync=nccl needs CUDA"):
        llm_kwargs("nccl")
    kwargs = llm_kwargs("gloo")
    assert kwargs["weight_transfer_config"].backend == GLOO_BACKEND
    assert kwargs["worker_extension_cls"] == "ral_dist.vllm.broadcast_sync.GlooWeightUpdateExtension"
    assert WeightTransferEngineFactory._registry[GLOO_BACKEND]() is GlooWeightTransferEngine

    calls = []

    class FakeLLM:  # after vLLM's finish_weight_update, the caches of the old weights are dropped
        def finish_weight_update(self):
            calls.append("finish")

        def reset_prefix_cache(self):
            calls.append("prefix")
            return True

        def reset_encoder_cache(self):
            calls.append("encoder")

    llm = FakeLLM()
    llm.llm_engine = llm
    engine = VLLMEngine.__new__(VLLMEngine)  # only its llm: the receiving side of one protocol call
    engine.llm = llm
    engine.weight_transfer("finish_weight_update")
    assert calls == ["finish", "encoder", "prefix"]
