"""The memory planner: what each role of an RL / distillation job holds per GPU, and whether it fits.

`plan_memory(config, arch)` reads a validated `RLJobConfig` / `DistillJobConfig` and the model's `Architecture`
(`architecture_for`: the checkpoint's config.json, else the tiny model's) and returns a `MemoryPlan`:
figures in bytes per actor of each role, the load of each GPU, and the step's token count. `MemoryPlan.check()`
raises `PlanError` naming the role that does not fit; `to_dict()` is what a run directory logs; `format_table`
is the CLI's (``python -m ral_dist.plan``).

Learner rank (P parameters, T of them trained, s bytes per element of model.dtype, N = learner.num_ranks;
the ZeRO paper's accounting, Rajbhandari et al. 2020)::

    weights     P*s              / N at ZeRO-3
    gradients   T*s              / N at ZeRO >= 2
    optimizer   T*(8 + 4)        / N at ZeRO >= 1   AdamW's two fp32 moments + the fp32 master copy (bf16 only;
                                                    with fp32 weights the weights are the master: T*8)
    reference   P*s              / N at ZeRO-3      learner.beta > 0: the frozen KL anchor
    DeepSpeed   reduce bucket min(5e8, T)*s at ZeRO >= 2; all-gather bucket min(5e8, P)*s at ZeRO 1-2; at ZeRO-3
                the gathered parameters of one layer (or the largest tensor) + the 5e7-element prefetch
    activations one micro-batch's peak (`memory_arch.activation_peak`)

DeepSpeed's own bf16 path at ZeRO-0 (BF16_Optimizer) differs: it shards the master copy and the moments like
ZeRO-1 and keeps fp32 gradient buffers (T*4); the no-grad forwards (reference, old-policy recompute) run one
micro-batch at a time between the updates and peak below the training forward, so they add nothing.

The prompt is planned at its budget: the larger of an image at data.image.max_pixels and a video of
data.video.max_frames frames at data.video.max_pixels (the generated task: its canvas-sized frames), plus
TEXT_TOKENS_OVERHEAD and a question of data.max_question_chars at 4 characters a token. A micro-batch holds as many whole sequences as
learner.micro_batch_tokens allows (at least one; None: the whole mini-batch).

Fit: on each GPU, the planner's estimates are inflated by SAFETY_MARGIN (the CUDA context, NCCL buffers and
allocator fragmentation they leave out) and vLLM's claim (gpu_memory_utilization x the GPU) is added as is.
Actors with fractional GPUs share GPUs, spread evenly over ceil(their GPUs summed) GPUs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ral_dist.runtime.memory_arch import (
    FP32,
    LOGPROB_CHUNK_POSITIONS,
    ActivationPeak,
    Architecture,
    ForwardShape,
    activation_peak,
    architecture,
    capture_chunk_transient,
    inference_peak_bytes,
    load_config_json,
    vision_block_saved_bytes,
)

GIB = 1024**3
SAFETY_MARGIN = 0.10
TEXT_TOKENS_OVERHEAD = 256  # chat template, system turn, vision brackets, instruction (Video-R1's: ~170 tokens)
CHARS_PER_TOKEN = 4
VLLM_UTILIZATION = 0.9  # vllm.LLM's default gpu_memory_utilization
VLLM_BATCHED_TOKENS = 8192  # the tokens of vLLM's profiling forward (its default max_num_batched_tokens)
DS_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size / allgather_bucket_size (elements)
DS_PREFETCH = 50_000_000  # DeepSpeed's default stage3_prefetch_bucket_size (elements)


class PlanError(ValueError):
    """Roles that cannot fit; the message names each, its figure and the budget; ``roles`` lists them."""

    def __init__(self, message: str, roles: list[str] | None = None):
        super().__init__(message)
        self.roles = roles or []


def dtype_bytes(dtype: str) -> int:
    return 2 if dtype in ("bfloat16", "float16") else 4


def architecture_for(model_config, path: str | None = None) -> Architecture:
    """The architecture of ``model.*`` / ``teacher.*``: ``path`` (a config.json or checkpoint dir) when given,
    else the checkpoint's config.json (``small-real:NAME``: the cached small real model's), the SFT config's model
    for ``sft:CONFIG`` (read from the working directory, as the jobs do), or the tiny model of its family with its
    ``tiny`` overrides."""
    checkpoint = model_config.checkpoint or ""
    if checkpoint.startswith("small-real:"):  # the cached small real model's directory (built if missing)
        from ral_dist.models.small_real import resolve_small_real

        checkpoint = resolve_small_real(checkpoint)
    if path or (checkpoint and not checkpoint.startswith("sft:")):
        source = path or checkpoint
        return architecture(load_config_json(source), source=str(source))
    if checkpoint.startswith("sft:"):
        from ral_dist.config import SFTJobConfig, load_config

        return architecture_for(load_config(SFTJobConfig, checkpoint[len("sft:"):]).model)
    from ral_dist.models import tiny_architecture

    return architecture(tiny_architecture(model_config.family, model_config.tiny), source="tiny")


@dataclass(frozen=True)
class PromptEstimate:
    image_tokens: int
    video_tokens: int
    text_tokens: int
    new_tokens: int

    @property
    def prompt_tokens(self) -> int:
        return max(self.image_tokens, self.video_tokens) + self.text_tokens

    @property
    def seq_len(self) -> int:
        return self.prompt_tokens + self.new_tokens


def prompt_estimate(config, arch: Architecture) -> PromptEstimate:
    """The planned sequence (module docstring); the generated grounded task's frames are its canvas."""
    from ral_dist.data.media import fit_pixels

    data = config.data
    image = arch.visual_tokens(data.image.max_pixels)
    video = arch.visual_tokens(data.video.max_pixels, data.video.max_frames)
    if data.dir is None and not data.files:
        task, side = data.task, data.task.canvas
        image = arch.visual_tokens(math.prod(fit_pixels(side, side, data.image.min_pixels, data.image.max_pixels)))
        frames = math.prod(fit_pixels(side, side, data.video.min_pixels, data.video.max_pixels))
        video = arch.visual_tokens(frames, task.video_frames) if task.fraction_video else 0
    text = TEXT_TOKENS_OVERHEAD + math.ceil(data.max_question_chars / CHARS_PER_TOKEN)
    return PromptEstimate(image, video, text, config.rollout.max_new_tokens)


@dataclass
class RoleMemory:
    """One actor of a role, on its (first) GPU or in its process: ``items`` are estimates in bytes, ``claimed``
    is memory an engine takes whatever it needs (vLLM's gpu_memory_utilization share)."""

    role: str
    actors: int
    gpus_per_actor: float
    items: dict[str, int]
    claimed: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what fails whatever the GPU (e.g. vLLM's KV minimum)
    kv_tokens: int | None = None  # vLLM: tokens its KV cache holds

    @property
    def estimate(self) -> int:
        return sum(self.items.values())


@dataclass
class GpuLoad:
    """One kind of GPU of the job: the actors on it and whether they fit (None: no GPU budget known)."""

    name: str
    count: int
    actors: dict[str, int]
    estimate: int
    claimed: int
    budget: int | None

    @property
    def need(self) -> int:
        return round(self.estimate * (1 + SAFETY_MARGIN)) + self.claimed

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.need <= self.budget


@dataclass
class MemoryPlan:
    arch: Architecture
    dtype: str
    prompt: PromptEstimate
    step_tokens: int
    micro_batch: ForwardShape
    micro_batch_tokens: int | None
    checkpointing: bool
    activation: ActivationPeak
    roles: list[RoleMemory]
    gpus: list[GpuLoad]
    gpu_bytes: int | None
    logprob_chunk: int = LOGPROB_CHUNK_POSITIONS

    def unfit(self) -> list[GpuLoad]:
        return [g for g in self.gpus if g.fits is False]

    def check(self) -> None:
        """Raise `PlanError` naming every role of a GPU that cannot hold its actors and every role with a
        problem (GPUs first)."""
        roles = {r.role: r for r in self.roles}
        messages, names = [], []
        for g in self.unfit():
            detail = "; ".join(f"{name} x{k}: " + ", ".join(f"{item} {b / GIB:.1f}" for item, b in
                                                             roles[name].items.items() if b)
                               + (f", vLLM's share {roles[name].claimed / GIB:.1f}" if roles[name].claimed else "")
                               for name, k in g.actors.items())
            messages.append(f"{' + '.join(g.actors)} cannot fit: {g.need / GIB:.1f} GiB per GPU (estimates "
                            f"+{SAFETY_MARGIN:.0%}) > {g.budget / GIB:.1f} GiB ({detail}; GiB)")
            names += [n for n in g.actors if n not in names]
        for r in self.roles:
            if r.problems:
                messages.append(f"{r.role}: " + "; ".join(r.problems))
                names += [r.role] if r.role not in names else []
        if messages:
            raise PlanError("; ".join(messages), names)

    def to_dict(self) -> dict:
        return {"model": {"family": self.arch.family, "source": self.arch.source, "params": self.arch.params.total,
                          "vision_params": self.arch.params.vision, "dtype": self.dtype},
                "prompt": asdict(self.prompt) | {"prompt_tokens": self.prompt.prompt_tokens,
                                                 "seq_len": self.prompt.seq_len},
                "step_tokens": self.step_tokens, "micro_batch": asdict(self.micro_batch),
                "micro_batch_tokens": self.micro_batch_tokens, "gradient_checkpointing": self.checkpointing,
                "logprob_chunk_positions": self.logprob_chunk, "activation": asdict(self.activation),
                "roles": [asdict(r) | {"estimate": r.estimate} for r in self.roles],
                "gpus": [asdict(g) | {"need": g.need, "fits": g.fits} for g in self.gpus],
                "gpu_bytes": self.gpu_bytes, "safety_margin": SAFETY_MARGIN}


def learner_state_bytes(arch: Architecture, s: int, num_ranks: int, zero_stage: int, freeze_vision: bool,
                        reference: bool) -> dict[str, int]:
    """One learner rank's weights, gradients, optimizer states, reference model and DeepSpeed buffers, in bytes,
    by ZeRO stage (the module docstring's table)."""
    p = arch.params
    total, trained = p.total, p.trainable(freeze_vision)
    shard = {k: (num_ranks if zero_stage >= k else 1) for k in (1, 2, 3)}
    items = {"weights": total * s // shard[3], "gradients": trained * s // shard[2],
             "optimizer": trained * (2 * FP32 + (FP32 if s != FP32 else 0)) // shard[1],
             "reference": total * s // shard[3] if reference else 0}
    if zero_stage == 3:
        layer = (total - p.vision - p.largest - p.lm_head) // max(1, arch.text.layers)
        items["deepspeed"] = (min(DS_BUCKET, trained) + max(layer, p.largest) + min(DS_PREFETCH, total)) * s
    else:
        items["deepspeed"] = (min(DS_BUCKET, trained) * (zero_stage >= 2)
                              + min(DS_BUCKET, total) * (zero_stage >= 1)) * s
    return items


def _learner(config, arch: Architecture, s: int, act: ActivationPeak) -> RoleMemory:
    lc = config.learner
    items = learner_state_bytes(arch, s, lc.num_ranks, lc.zero_stage, config.model.freeze_vision, lc.beta > 0)
    items["activations"] = act.peak
    return RoleMemory("learner", lc.num_ranks, lc.gpus_per_rank, items,
                      notes=[f"ZeRO-{lc.zero_stage} over {lc.num_ranks} rank(s)"])


def _scoring(arch: Architecture, n_seqs: int, prompt: PromptEstimate, s: int) -> int:
    """A no-grad scoring forward of ``n_seqs`` sequences: the vision tower's or the LM's largest layer (one at a
    time), the captured rows (fp32, kept), one chunk of rows' q . K^T and one log-prob chunk (logits, fp32 logits,
    log-softmax)."""
    t, seq_len, rows = arch.text, prompt.seq_len, prompt.new_tokens
    patches = n_seqs * max(prompt.image_tokens, prompt.video_tokens) * arch.vision.merge**2
    layer = max(inference_peak_bytes(t, n_seqs, seq_len, s), vision_block_saved_bytes(arch.vision, patches, s))
    return (layer + n_seqs * rows * seq_len * FP32 + capture_chunk_transient(t, n_seqs, seq_len, rows)
            + min(LOGPROB_CHUNK_POSITIONS, n_seqs * rows) * t.vocab * (s + 2 * FP32))


def _rollout(config, arch: Architecture, s: int, prompt: PromptEstimate, gpu_bytes: int | None,
             micro_batch_tokens: int | None) -> RoleMemory:
    rc = config.rollout
    seqs = math.ceil(rc.prompts_per_step / rc.num_workers) * rc.group_size  # one worker's share of a step
    seq_len, rows, p = prompt.seq_len, prompt.new_tokens, arch.params
    scoring_seqs = min(seqs, max(1, micro_batch_tokens // seq_len)) if micro_batch_tokens else seqs
    if rc.engine == "hf":  # generate() keeps every step's logits (output_logits) and the decoded rows
        items = {"weights": p.total * s, "kv_cache": seqs * seq_len * arch.kv_bytes_per_token(s),
                 "prefill": inference_peak_bytes(arch.text, seqs, prompt.prompt_tokens, s),
                 "step_logits": seqs * rows * arch.text.vocab * s, "attention_rows": seqs * rows * seq_len * FP32}
        return RoleMemory("rollout", rc.num_workers, rc.gpus_per_worker, items, notes=["hf engine"])
    vc = rc.vllm
    tp = int(vc.llm_kwargs.get("tensor_parallel_size", 1))
    util = float(vc.llm_kwargs.get("gpu_memory_utilization", VLLM_UTILIZATION))
    batched = int(vc.llm_kwargs.get("max_num_batched_tokens", VLLM_BATCHED_TOKENS))
    max_len = vc.max_model_len or arch.text.max_positions
    weights = p.total * s // tp
    reserve = inference_peak_bytes(arch.text, 1, batched, s) // tp + vc.max_num_seqs * arch.text.vocab * 2 * FP32
    notes = [f"vLLM TP {tp}, max_model_len {max_len}"]
    items: dict[str, int] = {}
    if rc.resolved_attention_on == "rollout":  # the transformers replica beside the engine, outside its share
        items = {"replica_weights": p.total * s,
                 "replica_scoring": _scoring(arch, scoring_seqs, prompt, s)}
        notes.append(f"replica scores {scoring_seqs} sequences per forward")
    per_token = arch.kv_bytes_per_token(s, tp)
    problems = []
    if seq_len > max_len:
        problems.append(f"prompt + max_new_tokens ({seq_len}) > max_model_len {max_len}")
    claimed = 0
    if rc.gpus_per_worker == 0:  # vLLM's CPU backend: a KV cache of fixed size
        kv = vc.cpu_kv_cache_gib * GIB
        items |= {"vllm_weights": weights, "vllm_kv_cache": kv}
    elif gpu_bytes is None:
        kv = None
        items |= {"vllm_weights": weights, "vllm_profile": reserve}
        notes.append(f"vLLM claims {util:.0%} of each GPU (size unknown)")
    else:
        claimed = round(util * gpu_bytes)
        kv = claimed - weights - reserve
        notes.append(f"vLLM's {util:.0%}: weights {weights / GIB:.1f} + profile {reserve / GIB:.1f} "
                     f"+ KV {max(kv, 0) / GIB:.1f} GiB")
    tokens = None if kv is None else max(kv, 0) // per_token
    if tokens is not None:
        notes.append(f"KV {tokens} tokens: {tokens // seq_len} sequences of {seq_len} at once (a step asks {seqs})")
        if tokens < max_len:  # vLLM refuses to start when one max_model_len sequence does not fit
            problems.append(f"vLLM's KV cache holds {tokens} tokens < max_model_len {max_len} (lower "
                            "rollout.vllm.max_model_len or give vLLM more memory)")
    return RoleMemory("rollout", rc.num_workers, rc.gpus_per_worker, items, claimed, notes, problems, tokens)


def _teacher(config, arch: Architecture, prompt: PromptEstimate) -> RoleMemory:
    tc = config.teacher
    s, split = dtype_bytes(tc.dtype), max(1.0, tc.gpus_per_worker)
    rows = prompt.new_tokens
    items = {"weights": int(arch.params.total * s / split),
             "scoring": _scoring(arch, tc.batch_size, prompt, s)}
    if tc.top_k is None:  # full log-probs over the vocabulary go out
        items["full_logprobs"] = tc.batch_size * rows * arch.text.vocab * FP32
    return RoleMemory("teacher", tc.num_workers, tc.gpus_per_worker, items,
                      notes=[f"split over {tc.gpus_per_worker:g} GPU(s)"])


def _gpu_loads(roles: list[RoleMemory], gpu_bytes: int | None) -> list[GpuLoad]:
    loads = [GpuLoad(r.role, r.actors * max(1, math.ceil(r.gpus_per_actor)), {r.role: 1}, r.estimate, r.claimed,
                     gpu_bytes) for r in roles if r.gpus_per_actor >= 1]
    shared = [r for r in roles if 0 < r.gpus_per_actor < 1]
    if shared:
        n_gpus = math.ceil(round(sum(r.actors * r.gpus_per_actor for r in shared), 6))
        per = {r.role: math.ceil(r.actors / n_gpus) for r in shared}
        loads.append(GpuLoad("shared", n_gpus, per, sum(per[r.role] * r.estimate for r in shared),
                             sum(per[r.role] * r.claimed for r in shared), gpu_bytes))
    return loads


def micro_batch_shape(config, arch: Architecture, prompt: PromptEstimate, micro_batch_tokens: int | None
                      ) -> ForwardShape:
    """One learner micro-batch: whole sequences up to ``micro_batch_tokens`` (at least one) of a rank's
    mini-batch."""
    lc, rc = config.learner, config.rollout
    per_minibatch = math.ceil(rc.prompts_per_step * rc.group_size / lc.num_ranks / lc.num_minibatches)
    n = per_minibatch if micro_batch_tokens is None else max(1, min(per_minibatch,
                                                                    micro_batch_tokens // prompt.seq_len))
    patches = max(prompt.image_tokens, prompt.video_tokens) * arch.vision.merge**2
    return ForwardShape(n, prompt.seq_len, prompt.new_tokens, patches)


_UNSET = object()


def plan_memory(config, arch: Architecture | None = None, *, gpu_gib: float | None = None,
                micro_batch_tokens=_UNSET, gradient_checkpointing=_UNSET, teacher_arch: Architecture | None = None,
                detect_gpu: bool = True) -> MemoryPlan:
    """The memory plan of a job config. ``arch``: the policy's (default `architecture_for(config.model)`);
    ``gpu_gib``: the GPU budget (default: the visible GPU's memory when ``detect_gpu``, else none: nothing is
    fitted); ``micro_batch_tokens`` / ``gradient_checkpointing``: what-if overrides of learner.micro_batch_tokens
    and model.gradient_checkpointing (default: the config's)."""
    arch = arch or architecture_for(config.model)
    if micro_batch_tokens is _UNSET:
        micro_batch_tokens = config.learner.micro_batch_tokens
    if gradient_checkpointing is _UNSET:
        gradient_checkpointing = config.model.gradient_checkpointing
    gpu_bytes = round(gpu_gib * GIB) if gpu_gib is not None else (visible_gpu_bytes() if detect_gpu else None)
    s = dtype_bytes(config.model.dtype)
    prompt = prompt_estimate(config, arch)
    shape = micro_batch_shape(config, arch, prompt, micro_batch_tokens)
    act = activation_peak(arch, shape, s, gradient_checkpointing, not config.model.freeze_vision)
    roles = [_learner(config, arch, s, act),
             _rollout(config, arch, s, prompt, gpu_bytes, micro_batch_tokens)]
    if hasattr(config, "teacher"):
        roles.append(_teacher(config, teacher_arch or architecture_for(config.teacher), prompt))
    rc = config.rollout
    step_tokens = rc.prompts_per_step * rc.group_size * prompt.seq_len
    return MemoryPlan(arch, config.model.dtype, prompt, step_tokens, shape, micro_batch_tokens,
                      gradient_checkpointing, act, roles, _gpu_loads(roles, gpu_bytes), gpu_bytes)


def visible_gpu_bytes() -> int | None:
    """Total memory of the first visible GPU, or None without one."""
    import torch

    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None
