"""The RL learner: one rank of a torch.distributed group that trains the policy with the RAL loss (RAL.md §2–3).

A plain class: the controller wraps it with ``ray.remote``; tests run it in-process. Each rank trains on its
shard of the step's trajectories under DeepSpeed (ZeRO 0–3, gloo on CPU, NCCL on GPU). The math lives in
``ral_dist.algorithms``; this class only lays batches out, runs forwards and steps the optimizer.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ral_dist import metrics
from ral_dist.algorithms import ral_loss, tis_weights
from ral_dist.collate import LearnerBatch, learner_batch
from ral_dist.config import job_config
from ral_dist.deepspeed_engine import cosine_lr, full_state_dict, init_engine, set_lr
from ral_dist.distill_learner import attach_targets, distill_terms, teacher_batch
from ral_dist.generation import score_responses
from ral_dist.messages import Trajectory, flatten
from ral_dist.models import build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.teacher import KeepLogits, response_logits

log = logging.getLogger(__name__)

ONE_UPDATE_WARNING = ("one update per rollout batch: the RAL attention term has zero gradient (RAL.md §3); "
                      "use num_minibatches >= 2 or ppo_epochs >= 2")
ZERO3_NORM_WARNING = ("zero_stage 3: the attention term's own gradient norm is not measured (attn_grad_norm* "
                      "are NaN); use zero_stage <= 2 to log it")

# Scalar stats averaged over the applied updates of a step, then over ranks.
_MEAN_STATS = ("loss", "policy_loss", "kl", "attn_loss", "attn_jsd", "clip_fraction", "ratio_mean")
# Distillation job only: the student's reverse KL to the teacher and its attention JSD to the teacher's (RAL.md §5).
DISTILL_STATS = ("reverse_kl", "teacher_attn_jsd")
TIS_STATS = ("tis_weight_mean", "tis_ratio_max", "tis_truncated_fraction")  # learner.tis_cap set only


def _is_vision_param(name: str) -> bool:
    return "visual" in name or "vision_model" in name


def _resolve(trajectories: list) -> list[Trajectory]:
    """The step's trajectories: plain, or Ray object refs each resolving to a RolloutBatch (or a list)."""
    if all(isinstance(t, Trajectory) for t in trajectories):
        return list(trajectories)
    import ray  # only the Ray path needs it; tests run without a Ray cluster

    return flatten([ray.get(t) if isinstance(t, ray.ObjectRef) else t for t in trajectories])


class Learner:
    def __init__(self, rank: int, world_size: int, master_addr: str, master_port: int, config: dict,
                 threads: int = 1):
        self.cfg = cfg = job_config(config)  # the distillation job's config adds teacher and distill
        self.distill = getattr(cfg, "distill", None)
        self._stats = _MEAN_STATS + (DISTILL_STATS if self.distill is not None else ())
        self.rank, self.world_size = rank, world_size
        cuda = torch.cuda.is_available()
        # Under Ray each GPU actor sees only its own device; on a shared node the rank picks one.
        local_rank = rank % max(1, torch.cuda.device_count()) if cuda else rank
        os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
                           "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port)})
        if cuda:
            torch.cuda.set_device(local_rank)
        self.device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
        if not dist.is_initialized():
            # A bounded collective timeout: a dead peer fails the step instead of hanging it forever.
            dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(seconds=cfg.run.timeout_s))
        torch.set_num_threads(threads)
        torch.manual_seed(cfg.run.seed)

        lc = cfg.learner
        # Same seed on every rank (build_tiny re-seeds with it): identical initial weights everywhere, and equal
        # to the rollout workers' weights at version 0.
        self.adapter, model, self.processor = build_policy(cfg.model.family, cfg.model.checkpoint, cfg.model.tiny,
                                                           seed=cfg.run.seed)
        if cfg.model.freeze_vision:
            for name, p in model.named_parameters():
                if _is_vision_param(name):
                    p.requires_grad_(False)
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
        self.model = model
        self.engine, self.optimizer = init_engine(model, lc.lr, lc.weight_decay, lc.zero_stage, micro_batch=1,
                                                  grad_clip=lc.grad_clip, bf16=bf16)
        self.pad_id = self.processor.tokenizer.pad_token_id
        self.version = 0
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

    # ------------------------------------------------------------------ helpers

    def _trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.engine.module.parameters() if p.requires_grad]

    def _to_device(self, batch: LearnerBatch) -> LearnerBatch:
        if self.device.type == "cpu":
            return batch
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.prompts.inputs.items()}
        prompts = dataclasses.replace(batch.prompts, inputs=inputs)
        return LearnerBatch(prompts, *(t.to(self.device) for t in (batch.response_ids, batch.response_mask,
                                                                    batch.old_logprobs, batch.p_old,
                                                                    batch.advantages)))

    def _score(self, model, batch: LearnerBatch, capture: bool):
        rc = self.cfg.rollout
        logp, attn, _, _ = score_responses(self.adapter, model, batch.prompts, batch.response_ids,
                                           batch.response_mask, self.pad_id, temperature=rc.temperature,
                                           capture=capture, alignment=rc.attention_rows)
        return logp, attn

    def _batch(self, trajs: list[Trajectory]) -> LearnerBatch:
        return self._to_device(learner_batch(self.adapter, self.processor, trajs, self.cfg.data.prompt_mode))

    @staticmethod
    def _unpad(batch: LearnerBatch, trajs: list[Trajectory], logp: torch.Tensor, attn: torch.Tensor | None):
        """Per-trajectory (logprobs [n], attention rows [n, prompt_len + n]) out of this batch's padding."""
        P = batch.prompts.prompt_len
        out = []
        for b, t in enumerate(trajs):
            n, off = len(t.response_ids), P - t.prompt_len
            rows = attn[b, :n, off : P + n].detach().cpu() if attn is not None else None
            out.append((logp[b, :n].detach().float().cpu(), rows))
        return out

    def _minibatches(self, shard: list[Trajectory], step: int, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.cfg.run.seed, step, epoch, self.rank]).permutation(len(shard))
        return [mb.tolist() for mb in np.array_split(order, self.cfg.learner.num_minibatches)]

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Every rank must agree to skip, or the ranks' gradient collectives would fall out of step."""
        flag = torch.tensor([1.0 if bool(torch.isfinite(loss)) else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item() > 0)

    # ------------------------------------------------------------------ training

    @torch.no_grad()
    def _recompute_old(self, shard: list[Trajectory], minibatches: list[list[int]], capture: bool) -> list:
        """Old log-probs and p_old from the current weights, before any update of this step.

        Scored over the same mini-batches the first epoch trains on, so that the first update sees p_theta equal
        to p_old bit for bit (the attention term's gradient is then exactly 0, RAL.md §3).
        """
        replaced: list = [None] * len(shard)
        for mb in minibatches:
            trajs = [shard[i] for i in mb]
            batch = self._batch(trajs)
            logp, attn = self._score(self.engine.module, batch, capture)
            for i, t, (lp, rows) in zip(mb, trajs, self._unpad(batch, trajs, logp, attn), strict=True):
                replaced[i] = dataclasses.replace(t, old_logprobs=lp, attention=rows if rows is not None
                                                  else t.attention)
        return replaced

    @torch.no_grad()
    def _ref_logprobs(self, batch: LearnerBatch, idx: list[int], trajs: list[Trajectory], cache: dict):
        """Reference log-probs [B, R] in this batch's layout; each trajectory is scored once per step."""
        missing = [k for k, i in enumerate(idx) if i not in cache]
        if missing:
            # the reference is frozen, so scoring the whole mini-batch once fills the cache for every epoch
            logp, _ = self._score(self.ref_model, batch, capture=False)
            for k, (lp, _) in enumerate(self._unpad(batch, trajs, logp, None)):
                cache.setdefault(idx[k], lp)
        out = torch.zeros_like(batch.old_logprobs)
        for k, i in enumerate(idx):
            out[k, : len(cache[i])] = cache[i].to(out.device)
        return out

    @staticmethod
    def _padded(like: torch.Tensor, rows: list[torch.Tensor]) -> torch.Tensor:
        """Per-trajectory values [n] laid out like ``like`` [B, R] (zeros in the padding)."""
        out = torch.zeros_like(like)
        for k, row in enumerate(rows):
            out[k, : len(row)] = row.to(out.device)
        return out

    def _tis_step_stats(self, shard: list[Trajectory], rollout_logp: list[torch.Tensor]) -> dict[str, float]:
        """TIS weight stats over every response token of the step, all ranks (the weights are fixed per step)."""
        old = torch.cat([t.old_logprobs for t in shard])
        _, local = tis_weights(old, torch.cat(rollout_logp), torch.ones_like(old), self.cfg.learner.tis_cap)
        n = float(len(old))
        sums = torch.tensor([local["tis_weight_mean"] * n, local["tis_truncated_fraction"] * n, n],
                            dtype=torch.float64, device=self.device)
        peak = torch.tensor([local["tis_ratio_max"]], dtype=torch.float64, device=self.device)
        dist.all_reduce(sums)
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        return {"tis_weight_mean": float(sums[0] / sums[2]), "tis_ratio_max": float(peak[0]),
                "tis_truncated_fraction": float(sums[1] / sums[2])}

    def _attn_grad_norm(self, attn_loss: torch.Tensor) -> float:
        """Global L2 norm of the attention term's own gradient (RAL.md §3 asks to log it separately)."""
        params = self._trainable()
        grads = torch.autograd.grad(attn_loss, params, retain_graph=True, allow_unused=True)
        sq = sum((g.double().pow(2).sum() for g in grads if g is not None), torch.zeros((), dtype=torch.float64))
        return float(sq.sqrt())

    @metrics.timed("learner", record=metrics.record_learner)
    def train_step(self, step: int, trajectories: list, advantages: list[float] | None = None,
                   teacher: list | None = None) -> dict:
        """ppo_epochs x num_minibatches updates on this rank's shard of the step; stats averaged over ranks.

        ``trajectories``: the whole step, or Ray object refs each resolving to a list of them (the controller
        passes refs, so the tensors go from the object store straight here). ``advantages``, when given, are
        the controller's group advantages in the same (flattened) order; otherwise each trajectory's own.
        ``teacher`` (distillation job): per item of ``trajectories``, the teacher's targets or a ref to them.
        """
        t0 = time.time()
        lc = self.cfg.learner
        everything = _resolve(trajectories)
        if advantages is not None:
            if len(advantages) != len(everything):
                raise ValueError(f"step {step}: {len(advantages)} advantages for {len(everything)} trajectories")
            for t, a in zip(everything, advantages, strict=True):
                t.advantage = float(a)
        if self.distill is not None:
            if teacher is None:
                raise ValueError(f"step {step}: the distillation learner needs the teacher's targets")
            teacher_wait_s = attach_targets(everything, teacher, step, self.cfg.run.timeout_s)
        # Checked identically on every rank (all see the whole list), so a bad batch fails everywhere, not by hanging.
        need = self.world_size * lc.num_minibatches
        if len(everything) < need:
            raise ValueError(f"step {step}: {len(everything)} trajectories cannot fill {lc.num_minibatches} "
                             f"mini-batches on each of {self.world_size} ranks (need >= {need})")
        shard = everything[self.rank :: self.world_size]
        # Capture is cheap (response rows only) and gives attn_jsd even when lambda_attn == 0.
        capture = True
        rollout_logp = [t.old_logprobs for t in shard]  # the rollout engine's, before the recomputation
        if lc.old_policy == "recompute":
            shard = self._recompute_old(shard, self._minibatches(shard, step, 0), capture)
        tis = self._tis_step_stats(shard, rollout_logp) if lc.tis_cap is not None else {}
        lr = cosine_lr(step, self.cfg.run.steps, lc.lr, lc.warmup_steps, lc.min_lr_ratio)
        set_lr(self.optimizer, lr)  # from the step number, so a resumed run continues the same schedule
        ref_cache: dict[int, torch.Tensor] = {}

        sums = dict.fromkeys(self._stats, 0.0)
        applied, skipped = 0, 0
        grad_norms: list[float] = []
        for epoch in range(lc.ppo_epochs):
            for mb in self._minibatches(shard, step, epoch):
                trajs = [shard[i] for i in mb]
                batch = self._batch(trajs)
                ref_logp = self._ref_logprobs(batch, mb, trajs, ref_cache) if self.ref_model is not None else None
                # Through the engine (not engine.module) so DeepSpeed's backward hooks see this forward.
                with KeepLogits(self.engine) if self.distill is not None else contextlib.nullcontext() as kept:
                    logp, p_theta = self._score(self.engine, batch, capture)
                weights = None
                if lc.tis_cap is not None:
                    weights, _ = tis_weights(batch.old_logprobs, self._padded(batch.old_logprobs, [
                        rollout_logp[i] for i in mb]), batch.response_mask, lc.tis_cap)
                terms = ral_loss(logp, batch.old_logprobs, ref_logp, batch.response_mask, batch.advantages,
                                 p_theta, batch.p_old, batch.response_mask, clip_eps=lc.clip_eps, beta=lc.beta,
                                 lambda_attn=lc.lambda_attn, mode=lc.loss_agg, token_weights=weights)
                distilled = {}
                if self.distill is not None:
                    logits = response_logits(kept.logits, batch.prompts.prompt_len, batch.response_ids.shape[1],
                                             self.cfg.rollout.temperature)
                    d = distill_terms(terms, logits, p_theta, batch, teacher_batch(batch, trajs), self.distill,
                                      lc.loss_agg)
                    terms = dataclasses.replace(terms, total=d.total)
                    distilled = {"reverse_kl": d.reverse_kl, "teacher_attn_jsd": d.attn_jsd}
                if not self._all_finite(terms.total):
                    # A NaN/inf advantage or old log-prob would poison the weights; drop this update on all ranks.
                    skipped += 1
                    grad_norms.append(float("nan"))
                    self.engine.zero_grad()
                    continue
                if self._measure_attn_grad and step % lc.attn_grad_norm_every == 0:
                    grad_norms.append(self._attn_grad_norm(lc.lambda_attn * terms.attn))
                else:
                    grad_norms.append(0.0 if lc.lambda_attn == 0 else float("nan"))
                self.engine.backward(terms.total)
                self.engine.step()
                applied += 1
                for key, value in (("loss", terms.total), ("policy_loss", terms.policy), ("kl", terms.kl),
                                   ("attn_loss", terms.attn), ("attn_jsd", terms.attn_jsd_mean),
                                   ("clip_fraction", terms.clip_fraction), ("ratio_mean", terms.ratio_mean),
                                   *distilled.items()):
                    sums[key] += float(value.detach()) if torch.is_tensor(value) else float(value)

        # One all-reduce for every per-rank scalar: the mean stats (over this rank's applied updates) and the
        # per-mini-batch attention gradient norms (every rank runs the same number of updates; the logged norm is
        # the mean of the ranks' local norms, not the norm of the averaged gradient).
        local = [sums[k] / applied if applied else float("nan") for k in self._stats] + grad_norms
        packed = torch.tensor(local, dtype=torch.float64, device=self.device)
        dist.all_reduce(packed)
        packed = (packed / self.world_size).cpu().tolist()
        means = dict(zip(self._stats, packed[: len(self._stats)], strict=True))
        by_mb = packed[len(self._stats) :]
        finite_norms = [g for g in by_mb if math.isfinite(g)]

        staleness = self.version - min(t.policy_version for t in everything)
        self.version += 1
        warnings = list(self.warnings)
        if skipped:
            warnings.append(f"step {step}: skipped {skipped} update(s) with a non-finite loss")
        return {
            **means,
            **tis,
            **({"teacher_wait_s": teacher_wait_s} if self.distill is not None else {}),
            "attn_grad_norm": float(np.mean(finite_norms)) if finite_norms else float("nan"),
            "attn_grad_norm_first": by_mb[0],
            "attn_grad_norm_by_minibatch": by_mb,
            "skipped_updates": skipped,
            "updates": applied,
            "lr": lr,
            "n_trajectories": len(everything),
            "n_tokens": int(sum(len(t.response_ids) for t in everything)),
            "learn_s": time.time() - t0,
            "staleness_max": staleness,
            "version": self.version,
            "warnings": warnings,
        }

    # ------------------------------------------------------------------ weights and checkpoints

    def state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full weights (HF names) on rank 0, None elsewhere. Collective under ZeRO-3: call on every rank."""
        state = full_state_dict(self.engine)
        if self.rank != 0:
            return None
        return {k: v.detach().cpu() for k, v in state.items()}

    def param_digest(self) -> float:
        """Sum of all parameters in float64: a cheap fingerprint of the weights. Collective under ZeRO-3."""
        params = list(self.engine.module.parameters())
        if self.engine.zero_optimization_stage() == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params):
                return float(sum(p.detach().double().sum() for p in params))
        return float(sum(p.detach().double().sum() for p in params))

    def save_checkpoint(self, path: str) -> None:
        """HF checkpoint (rank 0) plus DeepSpeed optimizer state (every rank). Call on every rank."""
        out = Path(path)
        state = self.state_dict()  # collective under ZeRO-3
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            self.engine.module.save_pretrained(str(out), state_dict=state, safe_serialization=True)
            self.processor.save_pretrained(str(out))
            (out / "learner_state.json").write_text(json.dumps({"version": self.version}) + "\n")
        # The version also travels in the client state, so a rank without rank 0's files still restores it.
        # save_latest=False: DeepSpeed's pointer file is also named "latest" and would collide with the tag dir.
        self.engine.save_checkpoint(str(out / "deepspeed"), tag="latest", client_state={"version": self.version},
                                    save_latest=False)
        dist.barrier()

    def load_checkpoint(self, path: str) -> int:
        load_path, client = self.engine.load_checkpoint(str(Path(path) / "deepspeed"), tag="latest")
        if load_path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {path}/deepspeed")
        if client and "version" in client:
            self.version = int(client["version"])
        else:
            self.version = int(json.loads((Path(path) / "learner_state.json").read_text())["version"])
        return self.version
