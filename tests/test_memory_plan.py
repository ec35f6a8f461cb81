"""The memory planner (ral_dist/runtime/memory_plan.py, memory_arch.py; ``python -m ral_dist.plan``): parameter
counts of real architectures, exact ZeRO arithmetic, its activation figures against peaks measured on CPU, and its
verdicts on the shipped 7B config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ral_dist.config import RLJobConfig, load_config
from ral_dist.models import get_adapter, tiny_architecture
from ral_dist.runtime.memory_arch import (
    Architecture,
    ParamCounts,
    TextDims,
    VisionDims,
    architecture,
    layer_saved_bytes,
    load_config_json,
)
from ral_dist.runtime.memory_plan import (
    GIB,
    PlanError,
    learner_state_bytes,
    plan_memory,
    prompt_estimate,
)

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
SHIPPED_7B = ROOT / "jobs" / "configs" / "qwen25vl_7b.yaml"
sys.path.insert(0, str(ROOT / "bench"))
import memory_plan_check  # noqa: E402


def fixture(size: str) -> Architecture:
    path = FIXTURES / f"qwen2_5_vl_{size}_config.json"
    return architecture(load_config_json(path), source=path.name)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl", "idefics3"])
def test_tiny_parameter_counts_equal_the_built_models(family):
    arch = architecture(tiny_architecture(family))
    model, _ = get_adapter(family).build_tiny()
    named = dict(model.named_parameters())
    assert arch.params.total == sum(p.numel() for p in named.values())
    assert arch.params.vision == sum(p.numel() for n, p in named.items() if "visual" in n or "vision_model" in n)
    assert arch.params.largest == max(p.numel() for p in named.values())
    assert arch.params.lm_head == model.lm_head.weight.numel()  # the tiny models do not tie their embeddings


def test_published_architectures_count_their_model_cards_sizes():
    # Exact counts of the meta-built models, and within 1 % of the model cards' 3.75B / 8.29B / 33.5B
    expected = {"3b": (3_754_622_976, 668_684_288, 3.75e9), "7b": (8_292_166_656, 676_550_144, 8.29e9),
                "32b": (33_448_292_352, 684_416_000, 33.5e9)}
    for size, (total, vision, card) in expected.items():
        arch = fixture(size)
        assert (arch.params.total, arch.params.vision) == (total, vision)
        assert abs(total / card - 1) < 0.01
    assert fixture("3b").params.lm_head == 0  # 3B ties its output embeddings to its input embeddings
    t = fixture("7b").text
    assert (t.hidden, t.intermediate, t.layers, t.heads, t.kv_heads, t.head_dim, t.vocab) == (
        3584, 18944, 28, 28, 4, 128, 152064)
    assert fixture("7b").kv_bytes_per_token(2) == 2 * 28 * 4 * 128 * 2


SMALL = Architecture("made_up", TextDims(8, 16, 4, 2, 1, 4, 50, 4096),
                     VisionDims(1, 4, 8, 1, 14, 2, 2, True, None), ParamCounts(1000, 200, 100, 300), "made up")


def test_zero_stages_shard_exactly():
    # P = 1000 parameters, 800 trained (the vision tower's 200 frozen), 4 ranks, bf16: 2 bytes, Adam 12 bytes
    by_stage = {stage: learner_state_bytes(SMALL, 2, 4, stage, freeze_vision=True, reference=True)
                for stage in range(4)}
    assert by_stage[0] == {"weights": 2000, "gradients": 1600, "optimizer": 9600, "reference": 2000,
                           "deepspeed": 0}
    assert by_stage[1] == {"weights": 2000, "gradients": 1600, "optimizer": 2400, "reference": 2000,
                           "deepspeed": 2000}  # + the all-gather bucket: the whole (small) model
    assert by_stage[2] == {"weights": 2000, "gradients": 400, "optimizer": 2400, "reference": 2000,
                           "deepspeed": 3600}  # + the reduce bucket: every trained gradient
    # ZeRO-3: the reduce bucket, the largest tensor gathered (300 > a layer's 100), the prefetch (capped by P)
    assert by_stage[3] == {"weights": 500, "gradients": 400, "optimizer": 2400, "reference": 500,
                           "deepspeed": (800 + 300 + 1000) * 2}
    fp32 = learner_state_bytes(SMALL, 4, 4, 0, freeze_vision=False, reference=False)
    assert (fp32["optimizer"], fp32["gradients"], fp32["reference"]) == (8000, 4000, 0)  # fp32: no master copy


def test_a_layer_saves_what_the_formula_says():
    t = SMALL.text  # h 8, i 16, 2 heads of 4 over 1 KV head
    # padded (2 sequences of 3): norms 2*6*8*(4+4) + q/k/v/out 6*4*2*(2+2)*2 (KV repeated) + lse 4*6*2
    # + the mask 2*3*3*2 + MLP 4*6*16*2
    assert layer_saved_bytes(t, 2, 3, 2) == 768 + 384 + 48 + 36 + 768
    assert layer_saved_bytes(t, 1, 3, 2) == 384 + 3 * 4 * 2 * (4 + 2) + 24 + 384  # one sequence: no mask, GQA


@pytest.mark.parametrize("case", memory_plan_check.QUICK, ids=lambda c: "-".join(map(str, c)))
def test_planned_activation_peak_within_15_percent_of_the_measured(case):
    r = memory_plan_check.check(*case)
    assert r["planned_weights"] == r["weights"]
    assert 0.85 <= r["ratio"] <= 1.15, r
    assert 0.85 <= r["total_ratio"] <= 1.15, r


def shipped_7b(*sets: str) -> RLJobConfig:
    return load_config(RLJobConfig, SHIPPED_7B, list(sets))


def test_the_shipped_7b_prompt_and_step():
    prompt = prompt_estimate(shipped_7b(), fixture("7b"))
    # a 128-frame video at 128 tokens a frame pair ... 64 x 128; an image of 5120 tokens; 256 + 512 / 4 text
    assert (prompt.video_tokens, prompt.image_tokens, prompt.text_tokens, prompt.seq_len) == (8192, 5120, 384, 9600)
    plan = plan_memory(shipped_7b(), fixture("7b"), gpu_gib=80)
    assert plan.step_tokens == 64 * 8 * 9600
    assert (plan.micro_batch.n_seqs, plan.micro_batch.n_tokens) == (1, 9600)  # a sequence is never split


def test_accepts_the_shipped_7b_on_8_gpus_of_80_gb():
    plan = plan_memory(shipped_7b(), fixture("7b"), gpu_gib=80)  # as shipped: attention_on auto (= learner),
    plan.check()  # micro_batch_tokens 8192, gradient checkpointing
    assert {g.name: g.count for g in plan.gpus} == {"learner": 4, "rollout": 4}
    assert all(g.fits for g in plan.gpus)
    json.dumps(plan.to_dict())  # what a run directory logs


def test_refuses_the_replica_beside_vllm_at_its_default_share():
    # a second bf16 copy of the 7B and its scoring forward beside vLLM's 90 %: why auto resolves to learner there
    plan = plan_memory(shipped_7b("rollout.attention_on=rollout"), fixture("7b"), gpu_gib=80)
    with pytest.raises(PlanError) as err:
        plan.check()
    assert err.value.roles == ["rollout"]


def test_refuses_an_impossible_7b_naming_the_learner():
    cfg = shipped_7b("learner.num_ranks=1", "learner.zero_stage=0", "rollout.num_workers=1",
                     "rollout.attention_on=learner", "rollout.vllm.max_model_len=16384")
    plan = plan_memory(cfg, fixture("7b"), gpu_gib=24, micro_batch_tokens=None, gradient_checkpointing=False)
    with pytest.raises(PlanError) as err:
        plan.check()
    assert err.value.roles == ["learner"]
    learner = next(g for g in plan.gpus if g.name == "learner")
    assert str(err.value).startswith(f"learner cannot fit: {learner.need / GIB:.1f} GiB per GPU")
    assert "> 24.0 GiB" in str(err.value)


def test_fractional_gpus_share_one():
    cfg = shipped_7b("rollout.num_workers=2", "rollout.gpus_per_worker=0.25", "rollout.engine=hf",
                     "learner.num_ranks=2", "learner.gpus_per_rank=0.25")
    plan = plan_memory(cfg, fixture("3b"), gpu_gib=80)
    (shared,) = plan.gpus
    assert (shared.name, shared.count, shared.actors) == ("shared", 1, {"learner": 2, "rollout": 2})
    assert shared.estimate == 2 * plan.roles[0].estimate + 2 * plan.roles[1].estimate


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ral_dist.plan", "--config", str(SHIPPED_7B), "--model-config",
                           str(FIXTURES / "qwen2_5_vl_7b_config.json"), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_cli_prints_the_table_and_exits_by_the_verdict():
    ok = run_cli("--gpu-gib", "80")
    assert ok.returncode == 0, ok.stderr
    assert "learner        4     1  weights" in ok.stdout
    assert [line.split()[-1] for line in ok.stdout.splitlines() if line.startswith(("learner ", "rollout "))
            and "x1" in line] == ["yes", "yes"]
    refused = run_cli("--gpu-gib", "24", "--set", "learner.num_ranks=1", "--set", "learner.zero_stage=0",
                      "--set", "rollout.attention_on=learner", "--set", "rollout.vllm.max_model_len=16384")
    assert refused.returncode == 1
    assert "does not fit: learner cannot fit" in refused.stderr


def test_a_job_that_cannot_fit_stops_before_any_actor_naming_the_role(tmp_path, capsys):
    """The job-start check (ral_dist.plan.check_at_start) with the GPU memory given in the config."""
    from ral_dist.plan import check_at_start

    sets = ("learner.num_ranks=1", "learner.zero_stage=0", "rollout.num_workers=1", "rollout.attention_on=learner",
            "rollout.vllm.max_model_len=16384", f"model.checkpoint={FIXTURES / 'qwen2_5_vl_7b_config.json'}",
            "run.gpu_memory_gib=24")
    with pytest.raises(SystemExit, match="error: the job cannot fit: learner cannot fit"):
        check_at_start(shipped_7b(*sets), tmp_path / "strict")
    written = json.loads((tmp_path / "strict" / "memory_plan.json").read_text())
    assert written["problem"].startswith("learner cannot fit") and written["gpu_bytes"] == 24 * GIB
    check_at_start(shipped_7b(*sets, "run.memory_check=warn"), tmp_path / "warn")  # goes on, says so
    assert "WARNING: the memory plan does not fit: learner cannot fit" in capsys.readouterr().out
    fits = shipped_7b(*sets[3:5], sets[5], "run.gpu_memory_gib=80")  # the shipped layout on 80 GB GPUs
    check_at_start(fits, tmp_path / "fits")
    assert json.loads((tmp_path / "fits" / "memory_plan.json").read_text())["problem"] is None
    check_at_start(shipped_7b(*sets, "run.memory_check=skip"), tmp_path / "skip")
    assert not (tmp_path / "skip").exists()
