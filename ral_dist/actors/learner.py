"""The RL learner: one rank of a torch.distributed group that trains the policy with the RAL loss (RAL.md §2–3).

A plain class: the controller wraps it with ``ray.remote``; tests run it in-process. Each rank trains on its
shard of the step's trajectories under DeepSpeed (ZeRO 0–3, gloo on CPU, NCCL on GPU).

The step belongs to this class: `prepare_step` (the rank's shard cut into mini- and micro-batches,
`ral_dist.actors.step_layout`; p_old recomputed when asked; the lr), then ppo_epochs x num_minibatches updates
(`_update`: per micro-batch forward, `compute_loss`, backward; one optimizer step), then one all-reduce of the
stats (`ral_dist.actors.step_stats`). Every mean of the loss is over the whole mini-batch on all ranks (`Denominators`), so micro-batches
(``learner.micro_batch_tokens``) and ranks change nothing but the memory. An algorithm changes only the loss hook
`compute_loss` and, when it needs inputs beyond the trajectories, `attach_targets` (the distillation learner,
`ral_dist.distill.learner`). The math lives in ``ral_dist.algorithms``; the weights going out (sync, digests,
checkpoints) in `ral_dist.actors.learner_weights`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ral_dist.actors.learner_weights import LearnerWeights
from ral_dist.actors.step_layout import global_denominators, micro_batch_groups, minibatch_indices
from ral_dist.actors.step_stats import LOSS_STATS, reduce_step, tis_step_stats
from ral_dist.algorithms import Denominators, LossTerms, ral_loss, tis_weights
from ral_dist.config import RLJobConfig
from ral_dist.evaluation.answer_heatmaps import generation_of_answers, heatmaps_of_answers
from ral_dist.evaluation.validation import generation_rows
from ral_dist.messages import LearnerStepStats, Trajectory
from ral_dist.messages.collate import LearnerBatch, learner_batch, response_batch
from ral_dist.models import build_policy, enable_gradient_checkpointing, freeze_vision_tower
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import ResponseForward, forward_responses
from ral_dist.rewards import reward_terms
from ral_dist.runtime import metrics
from ral_dist.runtime.deepspeed_setup import (
    deepspeed_config,
    discard_gradients,
    inference_engine,
    init_engine,
    reduced_grad_norm,
    set_lr,
    sharded_loading,
)
from ral_dist.runtime.devices import actor_device, assigned_gpu_ids, set_deepspeed_accelerator
from ral_dist.runtime.schedule import cosine_lr

log = logging.getLogger(__name__)

ONE_UPDATE_WARNING = ("one update per rollout batch: the RAL attention term has zero gradient (RAL.md §3); "
                      "use num_minibatches >= 2 or ppo_epochs >= 2")

STALE_P_OLD_WARNING = ("one_step_off with rollout.attention_on=learner: p_old is the learner's step-start weights, one "
                       "version newer than the behaviour policy (RAL.md §3); README: 'Which weights p_old comes from'")



def _resolve(trajectories: list) -> list[Trajectory]:
    """This rank's trajectories: plain, or Ray object refs each resolving to a list of them (one per chunk)."""
    if all(isinstance(t, Trajectory) for t in trajectories):
        return list(trajectories)
    import ray  # only the Ray path needs it; tests run without a Ray cluster

    return [t for item in trajectories for t in (ray.get(item) if isinstance(item, ray.ObjectRef) else item)]


@dataclass
class StepShard:
    """This rank's share of a step, ready for its updates."""

    trajectories: list[Trajectory]  # behaviour parts replaced when the learner recomputes p_old
    advantages: list[float]
    rollout_logprobs: list[torch.Tensor]  # [R] each: the rollout engine's, before any recomputation (TIS)
    layout: list[list[list[list[int]]]]  # per epoch, per mini-batch: its micro-batches' indices


@dataclass
class MiniBatch:
    """One forward's input (a micro-batch of an update), in the learner's padding and on its device."""

    indices: list[int]  # into the shard's trajectories
    batch: LearnerBatch
    ref_logprobs: torch.Tensor | None  # [B, R] the frozen reference's (beta > 0)
    token_weights: torch.Tensor | None  # [B, R] TIS weights (learner.tis_cap)
    denominators: Denominators  # the whole mini-batch's counts on all ranks, per rank
    weight: float = 1.0  # 0: a forward a rank runs only to keep step with the others (ZeRO-3), adding nothing


class Learner(LearnerWeights):
    config_class = RLJobConfig
    extra_loss_stats: tuple[str, ...] = ()  # the keys `compute_loss` adds to LOSS_STATS in its stats
    keep_logits = False  # `compute_loss` reads the response logits (ResponseForward.logits)

    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, config: dict,
                 threads: int = 1):
        self.cfg = cfg = self.config_class.model_validate(config)
        self.rank, self.world_size = rank, world_size
        self.device = self._join_group(master_addr, master_port)
        torch.set_num_threads(threads)
        torch.manual_seed(cfg.run.seed)

        lc = cfg.learner
        bf16 = cfg.model.dtype == "bfloat16"
        ds_config = deepspeed_config(lc.zero_stage, micro_batch=1, grad_clip=lc.grad_clip, bf16=bf16)
        model = self._build(ds_config)
        self.ref_model = self._reference(model, ds_config, torch.bfloat16 if bf16 else torch.float32) \
            if lc.beta > 0 else None
        self.ds_engine, self.optimizer = init_engine(model, lc.lr, lc.weight_decay, ds_config)
        self.version = 0
        self.weight_sender, self.sender_backend = None, None  # broadcast weight sync (open_weight_sender)
        self.warnings: list[str] = []
        if lc.lambda_attn > 0 and cfg.updates_per_rollout_batch == 1:
            self._warn_once(ONE_UPDATE_WARNING)

    def _build(self, ds_config: dict) -> torch.nn.Module:
        """The policy; a checkpoint is partitioned as it loads under ZeRO-3. A tiny random model is built whole with
        the run's seed (deepspeed.initialize partitions it): the very weights every rank and rollout worker builds."""
        self.adapter, model, self.processor = self._load(ds_config)
        self.banned = self.adapter.banned_token_ids(self.processor)  # read once: every forward scores without them
        # a prompt's pass runs once for its responses (prompt_sharing), through a KV cache that gradient
        # checkpointing drops
        self.shares_prompts = not self.cfg.model.gradient_checkpointing
        if self.cfg.model.freeze_vision:
            freeze_vision_tower(model)
        if self.cfg.model.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        use_capture_attention(model)
        model.train()  # dropout is 0 in these models; train mode only matters for custom checkpoints
        return model

    def _reference(self, model: torch.nn.Module, ds_config: dict, dtype: torch.dtype):
        """The KL anchor: the initial policy, frozen (it never gets gradients). Under ZeRO-3 built again, sharded,
        in an engine without optimizer; otherwise a copy, cast before it moves (a 7B never exists in fp32 on the
        GPU)."""
        if ds_config["zero_optimization"]["stage"] == 3:
            _, ref, _ = self._load(ds_config)
            return inference_engine(ref.eval().requires_grad_(False), ds_config)
        return copy.deepcopy(model).eval().requires_grad_(False).to(dtype=dtype).to(self.device)

    def _load(self, ds_config: dict):
        m = self.cfg.model
        with sharded_loading(ds_config) if m.checkpoint else contextlib.nullcontext():
            return build_policy(m.family, m.checkpoint, m.tiny, seed=self.cfg.run.seed)

    def _join_group(self, master_addr: str, master_port: int) -> torch.device:
        """Join the learners' process group; the device this rank trains on, from the GPUs Ray assigned it."""
        device = actor_device(assigned_gpu_ids(), torch.cuda.is_available(), self.rank)
        set_deepspeed_accelerator(device)
        local_rank = device.index if device.type == "cuda" else self.rank
        os.environ.update({"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(local_rank),
                           "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # A bounded collective timeout: a dead peer fails the step instead of hanging it forever.
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=self.rank,
                                    world_size=self.world_size,
                                    timeout=datetime.timedelta(seconds=self.cfg.run.timeout_s))
        return device

    # ------------------------------------------------------------------ the algorithm's hooks

    def compute_loss(self, mb: MiniBatch, forward: ResponseForward) -> tuple[LossTerms, dict[str, torch.Tensor]]:
        """The loss of one update, from the mini-batch and the current policy's forward over it: GRPO +
        lambda_attn * L_attn (RAL.md §3), and the ``extra_loss_stats`` of a subclass (none here)."""
        lc, b = self.cfg.learner, mb.batch
        terms = ral_loss(forward.logprobs, b.old_logprobs, mb.ref_logprobs, b.response_mask, b.advantages,
                         forward.attention, b.p_old, b.response_mask, clip_eps=lc.clip_eps, beta=lc.beta,
                         lambda_attn=lc.lambda_attn, mode=lc.loss_agg, token_weights=mb.token_weights,
                         denominators=mb.denominators)
        return terms, {}

    def attach_targets(self, step: int, trajectories: list[Trajectory], **inputs) -> dict[str, float]:
        """Take a subclass's per-step inputs beyond the trajectories (the RL learner has none); returns stats."""
        if inputs:
            raise TypeError(f"step {step}: unexpected inputs {sorted(inputs)} for {type(self).__name__}")
        return {}

    # ------------------------------------------------------------------ the step

    @metrics.timed("learner", record=metrics.record_learner)
    def train_step(self, step: int, trajectories: list, advantages: list[float], **inputs) -> LearnerStepStats:
        """ppo_epochs x num_minibatches updates on this rank's share of the step; stats averaged over ranks.

        ``trajectories``: this rank's share (`ral_dist.messages.split_shards`), plain or as Ray object refs each
        resolving to a list of them (the controller passes one ref per rollout chunk, so each rank fetches only its
        own tensors from the object store). ``advantages``: their group advantages, in the same order. ``inputs``:
        what `attach_targets` takes (the distillation job's teacher targets).
        """
        t0 = time.time()
        mine = _resolve(trajectories)
        if len(advantages) != len(mine):
            raise ValueError(f"step {step}: {len(advantages)} advantages for {len(mine)} trajectories")
        step_stats = self.attach_targets(step, mine, **inputs)
        shard, lr = self.prepare_step(step, mine, advantages)
        if self.cfg.learner.tis_cap is not None:
            step_stats |= tis_step_stats(torch.cat([t.behaviour.logprobs for t in shard.trajectories]),
                                         torch.cat(shard.rollout_logprobs), self.cfg.learner.tis_cap, self.device)
        ref_cache: dict[int, torch.Tensor] = {}
        outcomes = []
        for epoch in range(self.cfg.learner.ppo_epochs):
            for groups in shard.layout[epoch]:
                outcomes.append(self._update(self._micro_batches(shard, groups, ref_cache), self._measures(step)))
        self.version += 1
        return reduce_step(outcomes, self.extra_loss_stats, mine, self.version, self.world_size, self.device,
                           lr=lr, learn_s=time.time() - t0, warnings=list(self.warnings), extra=step_stats)

    def prepare_step(self, step: int, trajs: list[Trajectory], advantages: list[float]) -> tuple[StepShard, float]:
        """This rank's shard and its micro-batch layout (p_old and the old log-probs recomputed when
        learner.old_policy=recompute) and the step's lr (from the step number, so a resumed run continues the same
        schedule)."""
        lc = self.cfg.learner
        # The controller checks every rank's count before the step (a rank that raised here alone would leave the
        # others waiting in a collective until the timeout).
        if len(trajs) < lc.num_minibatches:
            raise ValueError(f"step {step}: {len(trajs)} trajectories cannot fill {lc.num_minibatches} mini-batches")
        lengths = [t.prompt.length + len(t.response.ids) for t in trajs]
        prompts = [t.prompt_key for t in trajs] if lc.minibatch_grouping == "prompt" else None
        layout = [[micro_batch_groups(lengths, mb, lc.micro_batch_tokens, self.device)
                   for mb in minibatch_indices(len(trajs), lc.num_minibatches,
                                               [self.cfg.run.seed, step, epoch, self.rank], prompts)]
                  for epoch in range(lc.ppo_epochs)]
        shard = StepShard(trajs, [float(a) for a in advantages], [t.behaviour.logprobs for t in trajs], layout)
        if lc.old_policy == "recompute":
            shard.trajectories = self._recompute_old(shard)
        lr = cosine_lr(step, self.cfg.run.steps, lc.lr, lc.warmup_steps, lc.min_lr_ratio)
        set_lr(self.optimizer, lr)
        return shard, lr

    def _measures(self, step: int) -> bool:
        return self.cfg.learner.lambda_attn > 0 and step % self.cfg.learner.attn_grad_norm_every == 0

    def _forward(self, model, batch, capture: bool | None = None) -> ResponseForward:
        """The current policy's forward over a batch; its attention rows only where consumed (``capture`` None:
        `RLJobConfig.learner_captures`)."""
        rc = self.cfg.rollout
        capture = self.cfg.learner_captures if capture is None else capture
        return forward_responses(self.adapter, model, batch.prompts, batch.response_ids, batch.response_mask,
                                 self.processor.tokenizer.pad_token_id, temperature=rc.temperature,
                                 banned=self.banned, capture=capture,
                                 alignment=rc.attention_rows, keep_logits=self.keep_logits and model is self.ds_engine,
                                 layers=self.cfg.attention.layers, shared=batch.shared)

    @torch.no_grad()
    def _recompute_old(self, shard: StepShard) -> list[Trajectory]:
        """Old log-probs and p_old from the current weights, before any update of this step (the proximal policy of
        decoupled PPO; learner.tis_cap corrects for the behaviour policy's log-probs).

        p_old stays the behaviour policy's, as RAL.md §3 names it, whenever it exists: recomputed rows are that
        policy while the learner holds the weights that sampled (sync mode; recomputing only removes the engine's
        numerical differences), and a stale trajectory (one_step_off) keeps the rows its rollout captured. Only
        with rollout.attention_on=learner, which sends none, is a stale trajectory's p_old the learner's weights
        at the step's start, one version newer (warned).

        Computed in the micro-batches the first epoch trains on, so that the first update sees p_theta equal to a
        recomputed p_old bit for bit (the attention term's gradient is then exactly 0, RAL.md §3).
        """
        has_rows = self.cfg.rollout.resolved_attention_on == "rollout"
        stale = [t.behaviour.version != self.version for t in shard.trajectories]
        keep = [has_rows and s for s in stale]
        if not has_rows and self.cfg.learner.lambda_attn > 0 and any(stale):
            self._warn_once(STALE_P_OLD_WARNING)
        replaced: list = list(shard.trajectories)
        first = next(i for groups in shard.layout[0] for g in groups for i in g)
        for groups in shard.layout[0]:
            for group in groups:  # an empty group still runs a forward: ZeRO-3 gathers in step on every rank
                trajs = [shard.trajectories[i] for i in group or [first]]
                batch = response_batch(self.adapter, self.processor, trajs, self.cfg.data,
                                       self.shares_prompts).to(self.device)
                fwd = self._forward(self.ds_engine.module, batch)
                rows_of = batch.unpad(fwd.attention, keys=True) if fwd.attention is not None else [None] * len(trajs)
                for i, t, lp, att in zip(group, trajs, batch.unpad(fwd.logprobs), rows_of, strict=False):
                    rows = t.behaviour.attention if keep[i] or att is None else att.detach().cpu()
                    behaviour = dataclasses.replace(t.behaviour, logprobs=lp.detach().float().cpu(), attention=rows)
                    replaced[i] = dataclasses.replace(t, behaviour=behaviour)
        return replaced

    def heatmaps(self, samples: list, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list | None:
        """PNG heatmaps of given answers (vLLM's greedy ones; no rollout worker holds a transformers copy when the
        learner scores) under the current weights. Every rank runs the forward (ZeRO-3 gathers in it); rank 0
        returns them."""
        out = heatmaps_of_answers(self.adapter, self.ds_engine.module, self.processor, self.cfg.data, samples,
                                  response_ids, response_mask, self.device, self.cfg.attention.layers)
        return out if self.rank == 0 else None

    def validation_rows(self, samples: list, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list | None:
        """Validation rows (`ral_dist.evaluation.validation.generation_rows`) of given answers (vLLM's greedy ones,
        when no rollout worker holds a transformers copy) under the current weights. Every rank runs the forward
        (ZeRO-3 gathers in it); rank 0 returns them."""
        gen, _ = generation_of_answers(self.adapter, self.ds_engine.module, self.processor, self.cfg.data, samples,
                                       response_ids, response_mask, self.device, self.cfg.attention.layers)
        if self.rank != 0:
            return None
        return generation_rows(gen, samples, self.adapter.temporal_patch(self.processor), self.processor.tokenizer,
                               self.cfg.data.prompt.mode, reward_terms(self.cfg.reward))

    def _warn_once(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
            if self.rank == 0:
                log.warning(message)

    def _micro_batches(self, shard: StepShard, groups: list[list[int]], ref_cache: dict) -> list[MiniBatch]:
        denominators = global_denominators([len(shard.trajectories[i].response.ids) for g in groups for i in g],
                                           self.world_size, self.device)
        first = next(i for g in groups for i in g)
        return [self._minibatch(shard, group or [first], ref_cache, denominators, weight=1.0 if group else 0.0)
                for group in groups]

    def _minibatch(self, shard: StepShard, indices: list[int], ref_cache: dict[int, torch.Tensor],
                   denominators: Denominators, weight: float = 1.0) -> MiniBatch:
        lc = self.cfg.learner
        trajs = [shard.trajectories[i] for i in indices]
        batch = learner_batch(self.adapter, self.processor, trajs, [shard.advantages[i] for i in indices],
                              self.cfg.data, self.shares_prompts).to(self.device)
        ref = self._ref_logprobs(batch, indices, ref_cache) if self.ref_model is not None else None
        weights = None
        if lc.tis_cap is not None:
            rollout = batch.pad([shard.rollout_logprobs[i] for i in indices], batch.old_logprobs)
            weights, _ = tis_weights(batch.old_logprobs, rollout, batch.response_mask, lc.tis_cap)
        return MiniBatch(indices, batch, ref, weights, denominators, weight)

    @torch.no_grad()
    def _ref_logprobs(self, batch: LearnerBatch, indices: list[int], cache: dict[int, torch.Tensor]) -> torch.Tensor:
        """Reference log-probs [B, R] in this batch's layout; each trajectory is scored once per step."""
        if any(i not in cache for i in indices):
            # the reference is frozen, so scoring the micro-batch once fills the cache for every epoch
            for i, lp in zip(indices, batch.unpad(self._forward(self.ref_model, batch, capture=False).logprobs),
                             strict=True):
                cache.setdefault(i, lp.detach().float().cpu())
        return batch.pad([cache[i] for i in indices], batch.old_logprobs)

    def _update(self, parts: list[MiniBatch], measure: bool) -> dict[str, float] | None:
        """One optimizer update from its micro-batches' accumulated gradients; its stats (summed over the
        micro-batches: each is already a share of the mini-batch's mean), or None when every rank skipped it for a
        non-finite loss."""
        lc = self.cfg.learner
        grad_norm = self._attention_grad_norm(parts) if measure else (0.0 if lc.lambda_attn == 0 else float("nan"))
        names = LOSS_STATS + self.extra_loss_stats
        stats = dict.fromkeys(names, 0.0)
        for k, mb in enumerate(parts):
            self.ds_engine.set_gradient_accumulation_boundary(k == len(parts) - 1)
            # Through the engine (not engine.module) so DeepSpeed's backward hooks see this forward.
            forward = self._forward(self.ds_engine, mb.batch)
            terms, extra = self.compute_loss(mb, forward)
            if not self._all_finite(terms.total):
                # A NaN/inf advantage or old log-prob would poison the weights; drop this update on all ranks.
                discard_gradients(self.ds_engine)
                return None
            self.ds_engine.backward(terms.total * mb.weight)
            measured = forward.attention is not None and mb.batch.p_old is not None
            jsd = terms.attn_jsd_mean if measured else float("nan")  # no rows (plain GRPO): not measured
            values = (terms.total, terms.policy, terms.kl, terms.attn, jsd, terms.clip_fraction,
                      terms.ratio_mean, *(extra[name] for name in self.extra_loss_stats))
            for name, v in zip(names, values, strict=True):
                stats[name] += mb.weight * (float(v.detach()) if torch.is_tensor(v) else float(v))
        # the whole update's gradient on the same steps, so the term's share of it can be read (RAL.md §3)
        total = reduced_grad_norm(self.ds_engine, self._trainable()) if measure else float("nan")
        self.ds_engine.step()
        return stats | {"attn_grad_norm": grad_norm, "grad_norm": total}

    def _attention_grad_norm(self, parts: list[MiniBatch]) -> float:
        """Norm of the update's gradient of lambda_attn * L_attn alone (RAL.md §3 asks to log it on its own),
        averaged over the ranks as the update's own gradient is: a backward of that term through every
        micro-batch, read at the accumulation boundary, then discarded."""
        for k, mb in enumerate(parts):
            self.ds_engine.set_gradient_accumulation_boundary(k == len(parts) - 1)
            fwd = self._forward(self.ds_engine, mb.batch)
            terms, _ = self.compute_loss(mb, fwd)
            loss = self.cfg.learner.lambda_attn * terms.attn * mb.weight
            if self.cfg.learner.zero_stage == 3:
                # ZeRO-3 gathers and frees each module's shards from hooks on its outputs and inputs; a gradient that
                # enters the last layer only through its captured q/k would free modules it never gathered. A zero
                # token term sends (zero) gradients through every output: the hooks fire in order, the sum is unchanged.
                loss = loss + 0.0 * fwd.logprobs.sum()
            self.ds_engine.backward(loss)
        norm = reduced_grad_norm(self.ds_engine, self._trainable())
        discard_gradients(self.ds_engine)
        return norm

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.ds_engine.module.parameters() if p.requires_grad]

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Every rank must agree to skip, or the ranks' gradient collectives would fall out of step."""
        flag = torch.tensor([1.0 if bool(torch.isfinite(loss)) else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)
