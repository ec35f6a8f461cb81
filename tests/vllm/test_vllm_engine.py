"""The vllm rollout engine in one RolloutWorker (one vLLM engine for the module): exact prompt tokens, attention
maps equal to a direct capture, the log-prob mismatch, weights pushed in place and pushed back."""

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
                                    torch.ones(1, n, dtype=torch.long), pad, temperature=0.9,
                                    banned=worker.adapter.banned_token_ids(worker.processor))
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
    assert worker.sync_check()["problems"] == []  # the job's verify_sync path: digests of replica and vLLM

    worker.update_weights(2, old)
    restored = worker.vllm_engine.greedy_parity(prompt, MAX_NEW)
    assert restored["vllm"] == before["vllm"] and restored["match"]


def test_the_digest_of_what_vllm_loaded_is_the_learners_and_a_wrong_load_is_caught(worker, monkeypatch):
    from ral_dist.vllm import engine as engine_module
    from ral_dist.vllm.weight_digest import digest_mismatches, state_digest

    state = {k: v.clone() for k, v in worker.model.state_dict().items()}
    held, seconds = worker.vllm_engine.load_state_dict(4, state)
    assert list(held) == ["vLLM worker 0"] and 0 < seconds < 1
    assert digest_mismatches(state_digest(state.items()), held["vLLM worker 0"], "vLLM") == []  # every tensor
    serialize = engine_module.serialize_state
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)

    def one_weight_off(state_dict):  # what the engine loads differs from what the worker was handed
        wrong = dict(state_dict)
        wrong[name] = wrong[name].clone()
        wrong[name].view(-1)[0] += 0.5
        return serialize(wrong)

    monkeypatch.setattr(engine_module, "serialize_state", one_weight_off)
    worker.update_weights(5, state)
    problems = worker.sync_check()["problems"]
    assert len(problems) == 1 and problems[0].startswith(f"v5 vLLM worker 0: {name} differs"), problems
    monkeypatch.undo()
    worker.update_weights(6, state)
    assert worker.sync_check()["problems"] == []


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
        def start_weight_update(self):
            calls.append("start")

        def finish_weight_update(self):
            calls.append("finish")

        def reset_prefix_cache(self):
            calls.append("prefix")
            return True

        def reset_encoder_cache(self):
            calls.append("encoder")

        def collective_rpc(self, method):  # the worker extension's digest of what the broadcast loaded
            calls.append(method)
            return [{"digest": {"w": [1.0, 1.0, 1.0]}, "digest_s": 0.25}] if method == "ral_take_digest" else [None]

    llm = FakeLLM()
    llm.llm_engine = llm
    engine = VLLMEngine.__new__(VLLMEngine)  # only its llm: the receiving side of one protocol call
    engine.llm, engine.unknown_state, engine.verify = llm, None, False
    assert engine.weight_transfer("finish_weight_update") == ({}, 0.0)
    assert calls == ["finish", "encoder", "prefix"]
    calls.clear()
    engine.verify = True  # run.verify_sync: the workers digest what they receive between start and finish
    assert engine.weight_transfer("start_weight_update") == ({}, 0.0)
    assert engine.weight_transfer("finish_weight_update") == ({"vLLM worker 0": {"w": [1.0, 1.0, 1.0]}}, 0.25)
    assert calls == ["ral_record_digest", "start", "finish", "encoder", "prefix", "ral_take_digest"]


def test_learner_rank_0_digests_what_it_sends():
    """The broadcast's reference: the sender digests each parameter as it yields it (on the learner's device); the
    other ranks only join the gathers."""
    from ral_dist.vllm.broadcast_sync import _ZeroSource
    from ral_dist.vllm.weight_digest import state_digest

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    engine = type("Engine", (), {"module": module, "zero_optimization_stage": lambda self: 0})()
    sender, other = _ZeroSource(engine, sender=True), _ZeroSource(engine, sender=False)
    assert [n for n, _ in sender] == [n for n, _ in module.named_parameters()] == [n for n, _ in other]
    assert sender.sent_digest == state_digest(module.named_parameters()) and other.sent_digest == {}
    with torch.no_grad():
        module[0].weight += 1
    list(sender)  # each send starts a new digest
    assert sender.sent_digest == state_digest(module.named_parameters())
