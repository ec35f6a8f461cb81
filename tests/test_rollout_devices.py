"""Where a rollout worker's transformers model runs (a pure function of the GPUs Ray assigned it and the config),
the worker's sync check on the hf engine, and the teacher's placement; in-process on the CPU, no Ray."""

import pytest
import torch

from ral_dist.actors.rollout_worker import RolloutWorker, rollout_placement
from ral_dist.config import RLJobConfig

CPU, GPU0 = torch.device("cpu"), torch.device("cuda", 0)


def config(**rollout) -> RLJobConfig:
    model = rollout.pop("model", {})
    return RLJobConfig.model_validate({"model": model, "rollout": rollout})


@pytest.mark.parametrize("gpu_ids, cuda, cfg, want", [
    # the hf engine samples and scores with the transformers model: on the worker's GPU in the model dtype
    ([], False, config(), (CPU, torch.float32, "rollout")),
    ([3], True, config(gpus_per_worker=1, model={"dtype": "bfloat16"}), (GPU0, torch.bfloat16, "rollout")),
    ([3], True, config(gpus_per_worker=1), (GPU0, torch.float32, "rollout")),  # model.dtype float32 stays
    ([3], False, config(gpus_per_worker=1, model={"dtype": "bfloat16"}), (CPU, torch.float32, "rollout")),
    # vLLM owns the GPU: attention_on auto -> the learner scores; no transformers copy is built (tests/vllm)
    ([0], True, config(engine="vllm", gpus_per_worker=1, model={"dtype": "bfloat16"}), (CPU, torch.float32, "learner")),
    # a replica that scores beside vLLM shares the worker's GPU, in the model dtype
    ([0], True, config(engine="vllm", gpus_per_worker=0.5, attention_on="rollout", model={"dtype": "bfloat16"}),
     (GPU0, torch.bfloat16, "rollout")),
    # vLLM on the CPU (the test vehicle): auto -> the replica scores
    ([], False, config(engine="vllm"), (CPU, torch.float32, "rollout")),
])
def test_the_transformers_model_runs_where_it_scores(gpu_ids, cuda, cfg, want):
    p = rollout_placement(gpu_ids, cfg, cuda)
    assert (p.device, p.dtype, p.attention_on) == want
    assert p.scores == (want[2] == "rollout")


@pytest.mark.parametrize("cpus, threads", [(None, 1), (0.25, 1), (1, 1), (3.5, 3), (8, 8)])
def test_threads_are_the_whole_cpus_ray_gave_the_worker(cpus, threads):
    assert rollout_placement([], config(), False, cpus).threads == threads


@pytest.fixture(scope="module")
def worker():
    cfg = RLJobConfig.model_validate({"model": {"family": "qwen2_5_vl"}, "rollout": {"max_new_tokens": 4}})
    return RolloutWorker(0, cfg.model_dump(mode="json"), threads=1)


def perturbed(state: dict, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def test_the_hf_engine_checks_what_it_holds_against_what_it_was_handed(worker):
    assert (worker.placement.device, worker.placement.dtype) == (CPU, torch.float32)
    assert next(worker.model.parameters()).device == CPU
    handed = perturbed(worker.model.state_dict(), 1)
    assert worker.update_weights(1, handed) == 1
    report = worker.sync_check()
    assert (report["version"], report["problems"]) == (1, []) and report["seconds"] > 0
    # a load that leaves the model holding other weights (here one element off) is out of sync, naming the tensor
    name = next(iter(worker.model.state_dict()))
    load = worker.model.load_state_dict

    def faulty_load(state, strict=True, assign=False):
        state = dict(state)
        state[name] = state[name].clone()
        state[name].view(-1)[0] += 1e-3
        return load(state, strict=strict, assign=assign)

    worker.model.load_state_dict = faulty_load
    try:
        worker.update_weights(2, perturbed(handed, 2))
    finally:
        del worker.model.load_state_dict
    report = worker.sync_check()
    assert report["version"] == 2 and report["problems"] == [p for p in report["problems"] if name in p]
    assert len(report["problems"]) == 1 and report["problems"][0].startswith(f"v2 policy: {name} differs")


def test_without_verify_sync_nothing_is_digested(worker):
    worker.cfg.run.verify_sync = False
    try:
        worker.update_weights(3, perturbed(worker.model.state_dict(), 3))
        assert worker.sync_check()["problems"] == ["no sync check of version 3"]
    finally:
        worker.cfg.run.verify_sync = True


def test_the_teacher_goes_to_the_gpus_ray_assigned(monkeypatch):
    from ral_dist.distill import teacher

    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(teacher, "assigned_gpu_ids", lambda: [])
    assert teacher._place(None, model) == CPU
    monkeypatch.setattr(teacher, "assigned_gpu_ids", lambda: [0])  # assigned, but this process sees no CUDA
    assert teacher._place(None, model) == CPU and model.weight.device == CPU


def test_beside_vllm_with_the_learner_scoring_no_copy_of_the_weights_is_built(tmp_path):
    """The 7B recipe's rollout worker: vLLM loads the checkpoint itself; nothing here scores, so the worker keeps
    only the adapter and processor (no fp32 replica on the CPU). Run without vLLM: the model-building step alone."""
    from ral_dist.models import build_policy

    _, model, processor = build_policy("qwen2_5_vl", None, {}, seed=0)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    cfg = config(engine="vllm", gpus_per_worker=1, model={"checkpoint": str(tmp_path), "dtype": "bfloat16"})
    worker = RolloutWorker.__new__(RolloutWorker)  # no vLLM engine in this environment: only the build step
    worker.cfg, worker.placement = cfg, rollout_placement([0], cfg, True)
    assert worker._build_model() is None
    assert worker.adapter.family == "qwen2_5_vl" and len(worker.processor.tokenizer) == len(processor.tokenizer)
    scoring = config(engine="vllm", gpus_per_worker=1, attention_on="rollout", model={"checkpoint": str(tmp_path)})
    worker.cfg, worker.placement = scoring, rollout_placement([], scoring, False)
    assert worker._build_model() is not None  # a replica that scores is built
