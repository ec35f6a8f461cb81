"""The RL learner: one rank of a torch.distributed group that trains the policy with the RAL loss (RAL.md §2–3).

A plain class: the controller wraps it with ``ray.remote``; tests run it in-process. Each rank trains on its
shard of the step's trajectories under DeepSpeed (ZeRO 0–3, gloo on CPU, NCCL on GPU).

The step belongs to this class: `prepare_step` (the rank's shard, p_old recomputed when asked, the lr), then
ppo_epochs x num_minibatches updates (`_update`: forward, `compute_loss`, backward, optimizer step), then one
all-reduce of the stats. An algorithm changes only the loss hook `compute_loss` and, when it needs inputs beyond
the trajectories, `attach_targets` (the distillation learner, `ral_dist.distill.learner`). The math lives in
``ral_dist.algorithms``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ral_dist.algorithms import LossTerms, ral_loss, tis_weights
from ral_dist.config import RLJobConfig
from ral_dist.messages import LearnerStepStats, Trajectory
from ral_dist.messages.collate import LearnerBatch, learner_batch, response_batch
from ral_dist.models import build_policy, freeze_vision_tower
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import ResponseForward, forward_responses
from ral_dist.runtime import metrics
from ral_dist.runtime.deepspeed_setup import full_state_dict, init_engine, set_lr
from ral_dist.runtime.schedule import cosine_lr

log = logging.getLogger(__name__)

ONE_UPDATE_WARNING = ("one update per rollout batch: the RAL attention term has zero gradient (RAL.md §3); "
                      "use num_minibatches >= 2 or ppo_epochs >= 2")
ZERO3_NORM_WARNING = ("zero_stage 3: the attention term's own gradient norm is not measured (attn_grad_norm* "
                      "are NaN); use zero_stage <= 2 to log it")

# What every loss reports of each update (averaged over the applied updates of a step, then over ranks).
LOSS_STATS = ("loss", "policy_loss", "kl", "attn_loss", "attn_jsd", "clip_fraction", "ratio_mean")


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


@dataclass
class MiniBatch:
    """One update's input, in the learner's padding and on its device."""

    indices: list[int]  # into the shard's trajectories
    batch: LearnerBatch
    ref_logprobs: torch.Tensor | None  # [B, R] the frozen reference's (beta > 0)
    token_weights: torch.Tensor | None  # [B, R] TIS weights (learner.tis_cap)


class Learner:
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
        # Same seed on every rank (build_tiny re-seeds with it): identical initial weights everywhere, and equal
        # to the rollout workers' weights at version 0.
        self.adapter, model, self.processor = build_policy(cfg.model.family, cfg.model.checkpoint, cfg.model.tiny,
                                                           seed=cfg.run.seed)
        if cfg.model.freeze_vision:
            freeze_vision_tower(model)
        use_capture_attention(model)
        model.train()  # dropout is 0 in these models; train mode only matters for custom checkpoints
        bf16 = cfg.model.dtype == "bfloat16"
        self.ref_model = None
        if lc.beta > 0:
            # The KL anchor: the initial policy, frozen, outside DeepSpeed (it never gets gradients).
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
            self.ref_model.to(self.device)
            if bf16:
                self.ref_model.to(torch.bfloat16)
        self.ds_engine, self.optimizer = init_engine(model, lc.lr, lc.weight_decay, lc.zero_stage, micro_batch=1,
                                                     grad_clip=lc.grad_clip, bf16=bf16)
        self.version = 0
        self.weight_sender, self.sender_backend = None, None  # broadcast weight sync (open_weight_sender)
        self.warnings: list[str] = []
        # torch.autograd.grad through a ZeRO-3 model trips its partitioned-backward hooks, so the attention term's
        # own gradient norm is measured under ZeRO 0-2 only.
        self._measure_attn_grad = lc.lambda_attn > 0 and lc.zero_stage < 3
        if lc.lambda_attn > 0 and cfg.updates_per_rollout_batch == 1:
            self.warnings.append(ONE_UPDATE_WARNING)
        if lc.lambda_attn > 0 and lc.zero_stage == 3:
            self.warnings.append(ZERO3_NORM_WARNING)
        for message in self.warnings:
            if rank == 0:
                log.warning(message)

    def _join_group(self, master_addr: str, master_port: int) -> torch.device:
        """Join the learners' process group; the device this rank trains on."""
        cuda = torch.cuda.is_available()
        # Under Ray each GPU actor sees only its own device; on a shared node the rank picks one.
        local_rank = self.rank % max(1, torch.cuda.device_count()) if cuda else self.rank
        os.environ.update({"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(local_rank),
                           "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
        if cuda:
            torch.cuda.set_device(local_rank)
        if not dist.is_initialized():
            # A bounded collective timeout: a dead peer fails the step instead of hanging it forever.
            dist.init_process_group("nccl" if cuda else "gloo", rank=self.rank, world_size=self.world_size,
                                    timeout=datetime.timedelta(seconds=self.cfg.run.timeout_s))
        return torch.device("cuda", local_rank) if cuda else torch.device("cpu")

    # ------------------------------------------------------------------ the algorithm's hooks

    def compute_loss(self, mb: MiniBatch, forward: ResponseForward) -> tuple[LossTerms, dict[str, torch.Tensor]]:
        """The loss of one update, from the mini-batch and the current policy's forward over it: GRPO +
        lambda_attn * L_attn (RAL.md §3), and the ``extra_loss_stats`` of a subclass (none here)."""
        lc, b = self.cfg.learner, mb.batch
        terms = ral_loss(forward.logprobs, b.old_logprobs, mb.ref_logprobs, b.response_mask, b.advantages,
                         forward.attention, b.p_old, b.response_mask, clip_eps=lc.clip_eps, beta=lc.beta,
                         lambda_attn=lc.lambda_attn, mode=lc.loss_agg, token_weights=mb.token_weights)
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
            step_stats |= self._tis_step_stats(shard)
        ref_cache: dict[int, torch.Tensor] = {}
        outcomes = []
        for epoch in range(self.cfg.learner.ppo_epochs):
            for indices in self._minibatches(len(shard.trajectories), step, epoch):
                outcomes.append(self._update(self._minibatch(shard, indices, ref_cache), self._measures(step)))
        self.version += 1
        return self._reduce(step, outcomes, step_stats, lr, mine, time.time() - t0)

    def prepare_step(self, step: int, trajs: list[Trajectory], advantages: list[float]) -> tuple[StepShard, float]:
        """This rank's shard (p_old and the old log-probs recomputed when learner.old_policy=recompute) and the
        step's lr (from the step number, so a resumed run continues the same schedule)."""
        lc = self.cfg.learner
        # The controller checks every rank's count before the step (a rank that raised here alone would leave the
        # others waiting in a collective until the timeout).
        if len(trajs) < lc.num_minibatches:
            raise ValueError(f"step {step}: {len(trajs)} trajectories cannot fill {lc.num_minibatches} mini-batches")
        shard = StepShard(trajs, [float(a) for a in advantages], [t.behaviour.logprobs for t in trajs])
        if lc.old_policy == "recompute":
            shard.trajectories = self._recompute_old(shard, self._minibatches(len(trajs), step, 0))
        lr = cosine_lr(step, self.cfg.run.steps, lc.lr, lc.warmup_steps, lc.min_lr_ratio)
        set_lr(self.optimizer, lr)
        return shard, lr

    def _minibatches(self, n: int, step: int, epoch: int) -> list[list[int]]:
        """The shard's indices in this epoch's seeded order, split into the mini-batches."""
        order = np.random.default_rng([self.cfg.run.seed, step, epoch, self.rank]).permutation(n)
        return [mb.tolist() for mb in np.array_split(order, self.cfg.learner.num_minibatches)]

    def _measures(self, step: int) -> bool:
        return self._measure_attn_grad and step % self.cfg.learner.attn_grad_norm_every == 0

    def _forward(self, model, batch, capture: bool = True) -> ResponseForward:
        rc = self.cfg.rollout
        # Capture is cheap (response rows only) and gives attn_jsd even when lambda_attn == 0.
        return forward_responses(self.adapter, model, batch.prompts, batch.response_ids, batch.response_mask,
                                 self.processor.tokenizer.pad_token_id, temperature=rc.temperature, capture=capture,
                                 alignment=rc.attention_rows, keep_logits=self.keep_logits and model is self.ds_engine)

    @torch.no_grad()
    def _recompute_old(self, shard: StepShard, minibatches: list[list[int]]) -> list[Trajectory]:
        """Old log-probs and p_old from the current weights, before any update of this step.

        Scored over the same mini-batches the first epoch trains on, so that the first update sees p_theta equal
        to p_old bit for bit (the attention term's gradient is then exactly 0, RAL.md §3).
        """
        replaced: list = [None] * len(shard.trajectories)
        for mb in minibatches:
            trajs = [shard.trajectories[i] for i in mb]
            batch = response_batch(self.adapter, self.processor, trajs, self.cfg.data).to(self.device)
            fwd = self._forward(self.ds_engine.module, batch)
            logprobs = batch.unpad(fwd.logprobs)
            rows = batch.unpad(fwd.attention, keys=True)
            for i, t, lp, att in zip(mb, trajs, logprobs, rows, strict=True):
                behaviour = dataclasses.replace(t.behaviour, logprobs=lp.detach().float().cpu(),
                                                attention=att.detach().cpu())
                replaced[i] = dataclasses.replace(t, behaviour=behaviour)
        return replaced

    def _minibatch(self, shard: StepShard, indices: list[int], ref_cache: dict[int, torch.Tensor]) -> MiniBatch:
        lc = self.cfg.learner
        trajs = [shard.trajectories[i] for i in indices]
        batch = learner_batch(self.adapter, self.processor, trajs, [shard.advantages[i] for i in indices],
                              self.cfg.data).to(self.device)
        ref = self._ref_logprobs(batch, indices, ref_cache) if self.ref_model is not None else None
        weights = None
        if lc.tis_cap is not None:
            rollout = batch.pad([shard.rollout_logprobs[i] for i in indices], batch.old_logprobs)
            weights, _ = tis_weights(batch.old_logprobs, rollout, batch.response_mask, lc.tis_cap)
        return MiniBatch(indices, batch, ref, weights)

    @torch.no_grad()
    def _ref_logprobs(self, batch: LearnerBatch, indices: list[int], cache: dict[int, torch.Tensor]) -> torch.Tensor:
        """Reference log-probs [B, R] in this batch's layout; each trajectory is scored once per step."""
        if any(i not in cache for i in indices):
            # the reference is frozen, so scoring the whole mini-batch once fills the cache for every epoch
            for i, lp in zip(indices, batch.unpad(self._forward(self.ref_model, batch, capture=False).logprobs),
                             strict=True):
                cache.setdefault(i, lp.detach().float().cpu())
        return batch.pad([cache[i] for i in indices], batch.old_logprobs)

    def _update(self, mb: MiniBatch, measure: bool) -> dict[str, float] | None:
        """One optimizer update; its stats, or None when every rank skipped it for a non-finite loss."""
        lc = self.cfg.learner
        # Through the engine (not engine.module) so DeepSpeed's backward hooks see this forward.
        terms, extra = self.compute_loss(mb, self._forward(self.ds_engine, mb.batch))
        if not self._all_finite(terms.total):
            # A NaN/inf advantage or old log-prob would poison the weights; drop this update on all ranks.
            self.ds_engine.zero_grad()
            return None
        if measure:
            grad_norm = self._attn_grad_norm(lc.lambda_attn * terms.attn)
        else:
            grad_norm = 0.0 if lc.lambda_attn == 0 else float("nan")
        self.ds_engine.backward(terms.total)
        self.ds_engine.step()
        values = (terms.total, terms.policy, terms.kl, terms.attn, terms.attn_jsd_mean, terms.clip_fraction,
                  terms.ratio_mean, *(extra[k] for k in self.extra_loss_stats))
        stats = {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                 for k, v in zip(LOSS_STATS + self.extra_loss_stats, values, strict=True)}
        return stats | {"attn_grad_norm": grad_norm}

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Every rank must agree to skip, or the ranks' gradient collectives would fall out of step."""
        flag = torch.tensor([1.0 if bool(torch.isfinite(loss)) else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    def _attn_grad_norm(self, attn_loss: torch.Tensor) -> float:
        """Global L2 norm of the attention term's own gradient (RAL.md §3 asks to log it separately)."""
        params = [p for p in self.ds_engine.module.parameters() if p.requires_grad]
        grads = torch.autograd.grad(attn_loss, params, retain_graph=True, allow_unused=True)
        sq = sum((g.double().pow(2).sum() for g in grads if g is not None), torch.zeros((), dtype=torch.float64))
        return float(sq.sqrt())

    def _tis_step_stats(self, shard: StepShard) -> dict[str, float]:
        """TIS weight stats over every response token of the step, all ranks (the weights are fixed per step)."""
        old = torch.cat([t.behaviour.logprobs for t in shard.trajectories])
        _, local = tis_weights(old, torch.cat(shard.rollout_logprobs), torch.ones_like(old), self.cfg.learner.tis_cap)
        n = float(len(old))
        sums = torch.tensor([local["tis_weight_mean"] * n, local["tis_truncated_fraction"] * n, n],
                            dtype=torch.float64, device=self.device)
        peak = torch.tensor([local["tis_ratio_max"]], dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        return {"tis_weight_mean": float(sums[0] / sums[2]), "tis_ratio_max": float(peak[0]),
                "tis_truncated_fraction": float(sums[1] / sums[2])}

    def _reduce(self, step: int, outcomes: list[dict | None], step_stats: dict[str, float], lr: float,
                mine: list[Trajectory], seconds: float) -> LearnerStepStats:
        """One all-reduce for every per-rank scalar: the mean stats (over this rank's applied updates), the
        per-update attention gradient norms (every rank runs the same number of updates; the logged norm is the
        mean of the ranks' local norms, not the norm of the averaged gradient) and the step's counts; one more for
        the oldest policy version of the step."""
        names = LOSS_STATS + self.extra_loss_stats
        applied = [o for o in outcomes if o is not None]
        means = [sum(o[k] for o in applied) / len(applied) if applied else float("nan") for k in names]
        norms = [o["attn_grad_norm"] if o is not None else float("nan") for o in outcomes]
        counts = [len(mine), sum(len(t.response.ids) for t in mine)]
        packed = torch.tensor(means + norms + counts, dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        n_trajectories, n_tokens = (int(v) for v in packed[-2:].tolist())
        packed = (packed[:-2] / self.world_size).cpu().tolist()
        oldest = torch.tensor([min(t.behaviour.version for t in mine)], dtype=torch.float64, device=self.device)
        dist.all_reduce(oldest, op=dist.ReduceOp.MIN)
        mean = dict(zip(names, packed[: len(names)], strict=True))
        by_mb = packed[len(names) :]
        finite_norms = [g for g in by_mb if math.isfinite(g)]
        skipped = len(outcomes) - len(applied)
        warnings = list(self.warnings) + ([f"step {step}: skipped {skipped} update(s) with a non-finite loss"]
                                          if skipped else [])
        return LearnerStepStats(
            **{k: mean[k] for k in LOSS_STATS},
            attn_grad_norm=float(np.mean(finite_norms)) if finite_norms else float("nan"),
            attn_grad_norm_first=by_mb[0], attn_grad_norm_by_minibatch=by_mb, skipped_updates=skipped,
            updates=len(applied), lr=lr, n_trajectories=n_trajectories, n_tokens=n_tokens, learn_s=seconds,
            staleness_max=self.version - 1 - int(oldest.item()), version=self.version, warnings=warnings,
            extra=step_stats | {k: mean[k] for k in self.extra_loss_stats})

    # ------------------------------------------------------------------ weights and checkpoints

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights (HF names) on rank 0, None elsewhere. Collective under ZeRO-3: call on every rank."""
        state = full_state_dict(self.ds_engine)
        if self.rank != 0:
            return None
        return {k: v.detach().cpu() for k, v in state.items()}

    def param_digest(self) -> float:
        """Sum of all parameters in float64: a cheap fingerprint of the weights. Collective under ZeRO-3."""
        params = list(self.ds_engine.module.parameters())
        if self.ds_engine.zero_optimization_stage() == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params):
                return float(sum(p.detach().double().sum() for p in params))
        return float(sum(p.detach().double().sum() for p in params))

    def open_weight_sender(self, backend: str, rollout_actors: list, ranks_per_engine: int, timeout_s: float) -> None:
        """Broadcast weight sync (``rollout.vllm.weight_sync`` nccl / gloo): join the weight-transfer group of the
        rollout workers' vLLM engines. Every rank: under ZeRO-3 each parameter is gathered as it is sent."""
        from ral_dist.vllm.broadcast_sync import open_sender

        self.weight_sender = open_sender(self.rank, self.ds_engine, backend, rollout_actors, ranks_per_engine,
                                         timeout_s)
        self.sender_backend = backend

    def send_weights(self, version: int, timeout_s: float) -> None:
        """One broadcast of the current weights into the engines (every rank takes part)."""
        from ral_dist.vllm.broadcast_sync import send_weights

        if self.weight_sender is None:
            raise RuntimeError("send_weights before open_weight_sender")
        send_weights(self.weight_sender, self.sender_backend, version, timeout_s)

    def save_checkpoint(self, path: str) -> None:
        """HF checkpoint (rank 0) plus DeepSpeed optimizer state (every rank). Call on every rank."""
        out = Path(path)
        state = self.state_dict()  # collective under ZeRO-3
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            self.ds_engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
            self.processor.save_pretrained(str(out))
            (out / "learner_state.json").write_text(json.dumps({"version": self.version}) + "\n")
        # The version also travels in the client state, so a rank without rank 0's files still restores it.
        # save_latest=False: DeepSpeed's pointer file is also named "latest" and would collide with the tag dir.
        self.ds_engine.save_checkpoint(str(out / "deepspeed"), tag="latest", client_state={"version": self.version},
                                       save_latest=False)
        dist.barrier()

    def load_checkpoint(self, path: str) -> int:
        load_path, client = self.ds_engine.load_checkpoint(str(Path(path) / "deepspeed"), tag="latest")
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}/deepspeed")
        if client and "version" in client:
            self.version = int(client["version"])
        else:
            self.version = int(json.loads((Path(path) / "learner_state.json").read_text())["version"])
        return self.version
