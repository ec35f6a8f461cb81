"""The controller of an RL run: placement group, actors, the step loop, advantages, weight sync, checkpoints.

It moves ObjectRefs, not tensors: trajectories go from rollout workers to reward workers and learners through
the object store; the controller only fetches the small reward results it needs for the group advantages.
Modes: ``sync`` (rollout k+1 starts after the weights of step k are synced) and ``one_step_off`` (rollout k+1
overlaps learning of step k, with the weights of step k-1: staleness bound 1). The distillation job's controller
(`ral_dist.distill.controller`) adds its teachers through the ``_extra_*`` hooks.
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from collections import Counter

import numpy as np
import ray
import torch

from ral_dist.actors.learner import Learner
from ral_dist.actors.reward_worker import RewardWorker
from ral_dist.actors.rollout_worker import RolloutWorker
from ral_dist.actors.validation import Validation
from ral_dist.actors.weight_sync import make_transport
from ral_dist.algorithms import group_advantages
from ral_dist.config import RLJobConfig
from ral_dist.data import Sample
from ral_dist.messages import (
    LearnerStepStats,
    PhaseTimes,
    RewardBatch,
    RewardResult,
    chunk_offset,
    per_type_summary,
    split_shards,
)
from ral_dist.rewards import reward_terms
from ral_dist.runtime import metrics
from ral_dist.runtime.placement import bundle, place_roles
from ral_dist.runtime.ray_cluster import wait_all
from ral_dist.runtime.run_dir import RunDir
from ral_dist.runtime.schedule import batch_indices, format_eta
from ral_dist.vllm.logprob_mismatch import aggregate as logprob_mismatch

# Failures a run recovers from by restarting its actors from the last checkpoint.
RECOVERABLE = (ray.exceptions.RayActorError, ray.exceptions.RayTaskError, TimeoutError)


@ray.remote(num_cpus=0)
def _free_address() -> tuple[str, int]:
    """An address for the learners' torch.distributed rendezvous, on the node of learner rank 0."""
    with socket.socket() as s:
        s.bind(("", 0))
        return ray.util.get_node_ip_address(), s.getsockname()[1]


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


class Controller:
    learner_class = Learner

    def __init__(self, cfg: RLJobConfig, run_dir: RunDir, train: list[Sample], heatmap_samples: list[Sample],
                 attempt: int = 0):
        self.cfg = cfg
        self.attempt = attempt  # recoveries so far; names of a recovered controller's actors carry it
        self.run = run_dir
        self.train = train
        self.heatmap_samples = heatmap_samples
        self.transport = make_transport(cfg)
        self.reward_terms = tuple(reward_terms(cfg.reward))
        self.version = 0
        self.weights: list = []  # [(version, state ref)] once the learner has published weights
        self.placement = None  # RolePlacements: a placement group per role
        self.validation = Validation(cfg, run_dir)  # run.val_every: greedy on the val split, on the rollout workers

    # ------------------------------------------------------------------ actors
    def start(self) -> None:
        c = self.cfg
        lc, rc, wc = c.learner, c.rollout, c.reward
        roles = [("learner", [bundle(lc.cpus_per_rank, lc.gpus_per_rank)] * lc.num_ranks),
                 ("rollout", [bundle(rc.cpus_per_worker, rc.gpus_per_worker)] * rc.num_workers),
                 ("reward", [bundle(wc.cpus_per_worker)] * wc.num_workers)] + self._extra_roles()
        self.placement = place_roles(roles, c.placement, c.placement.wait_timeout_s or c.run.timeout_s)
        on = self.placement.on

        config = c.model_dump(mode="json")
        # Rollout and reward workers read the RL sections only (the distillation job's config adds its own).
        worker_config = {k: v for k, v in config.items() if k in RLJobConfig.model_fields}
        prefix = f"ral-{self.run.path.name}" + (f"-r{self.attempt}" if self.attempt else "")
        addr, port = wait_all([_free_address.options(**on("learner", 0)).remote()], "a rendezvous port",
                              c.run.timeout_s)[0]
        learner_cls = ray.remote(self.learner_class)
        self.learners = [
            learner_cls.options(name=f"{prefix}-learner-{r}", num_cpus=lc.cpus_per_rank, num_gpus=lc.gpus_per_rank,
                                **on("learner", r)).remote(r, lc.num_ranks, addr, port, config)
            for r in range(lc.num_ranks)]
        rollout_cls = ray.remote(max_restarts=3, max_task_retries=2)(RolloutWorker)
        self.rollouts = [
            rollout_cls.options(name=f"{prefix}-rollout-{i}", num_cpus=rc.cpus_per_worker,
                                num_gpus=rc.gpus_per_worker, **on("rollout", i)).remote(i, worker_config)
            for i in range(rc.num_workers)]
        reward_cls = ray.remote(max_restarts=3, max_task_retries=2)(RewardWorker)
        self.rewarders = [
            reward_cls.options(name=f"{prefix}-reward-{i}", num_cpus=wc.cpus_per_worker,
                               **on("reward", i)).remote(worker_config)
            for i in range(wc.num_workers)]
        self._start_extra(on, prefix, config)
        self.sync_bytes = wait_all([learner.state_nbytes.remote() for learner in self.learners], "learners to start",
                                   c.run.timeout_s)[0]
        wait_all([w.get_version.remote() for w in self.rollouts], "rollout workers to start", c.run.timeout_s)
        self.transport.connect(self.learners, self.rollouts, c.run.timeout_s)  # broadcast modes: form the group

    def environments(self) -> dict[str, dict]:
        """The environment (`ral_dist.runtime.environment.process_environment`) of one actor of each role."""
        roles = {"learner": self.learners[0], "rollout": self.rollouts[0]}
        found = wait_all([actor.environment.remote() for actor in roles.values()], "the actors' environments",
                         self.cfg.run.timeout_s)
        return dict(zip(roles, found, strict=True))

    def _extra_roles(self) -> list[tuple[str, list[dict]]]:
        """A subclass's further role groups: (role of `ral_dist.placement_config.ROLES`, its bundles)."""
        return []

    def _start_extra(self, on, prefix: str, config: dict) -> None:
        """Start those actors (``on(role, i)``: the scheduling options of that role's bundle i) and wait until they
        are up."""

    def _learner_inputs(self, step: int, rank: int) -> dict:
        """Further inputs of this step's ``train_step`` on one rank (a subclass's learner takes them in
        `attach_targets`)."""
        return {}

    def _after_learn(self, step: int) -> dict:
        """A subclass's further fields of the step record, once the learners have returned."""
        return {}

    def stop(self) -> None:
        for actor in getattr(self, "learners", []) + getattr(self, "rollouts", []) + getattr(self, "rewarders", []):
            ray.kill(actor)
        if self.placement is not None:
            self.placement.remove()

    # ------------------------------------------------------------------ one step's pieces
    def _launch_rollout(self, step: int) -> tuple[list[list], float]:
        """One rollout call per worker; each chunk's refs: [accounting, rank 0's trajectories, rank 1's, ...]."""
        idx = batch_indices(step, self.cfg.rollout.prompts_per_step, len(self.train), self.cfg.run.seed)
        chunks = np.array_split(np.arange(len(idx)), len(self.rollouts))
        returns = self.cfg.learner.num_ranks + 1
        refs = [w.rollout.options(num_returns=returns).remote(step, [self.train[idx[g]] for g in chunk],
                                                              chunk.tolist(), self.weights)
                for w, chunk in zip(self.rollouts, chunks, strict=True) if len(chunk)]
        return refs, time.time()

    def _launch_step(self, step: int) -> tuple[list[list], list, float]:
        """The step's rollout calls and, chained on each, its reward call: a worker's batch is scored as soon as it
        lands, beside the other workers' sampling."""
        chunks, t_launch = self._launch_rollout(step)
        reward_refs = [self.rewarders[i % len(self.rewarders)].reward_batch.remote(*chunk)
                       for i, chunk in enumerate(chunks)]
        return chunks, reward_refs, t_launch

    def _sync_weights(self) -> tuple[float, int]:
        # the full state through the object store only where a rollout worker loads it (not a broadcast into vLLM
        # with the learner scoring: no transformers copy there); every rank takes part (ZeRO-3 gathers)
        state_refs = ([learner.state_dict.remote() for learner in self.learners] if self.transport.carries_state
                      else [None])
        report = self.transport.push(self.version, state_refs[0], self.rollouts, self.cfg.run.timeout_s,
                                     nbytes=self.sync_bytes)
        self.weights = [(self.version, state_refs[0])]  # kept alive here: a restarted worker loads it
        wait_all(state_refs[1:], "learner ranks to release the weights", self.cfg.run.timeout_s)
        return report.seconds, report.bytes

    def weights_in_sync(self) -> bool:
        """Every rollout worker holds the learner's weights of this version: each compared, at the sync, the
        digests of what it holds (the scoring model, each vLLM worker) with the learner's (the state dict it was
        handed, or what learner rank 0 broadcast), within `ral_dist.vllm.weight_digest.DIGEST_RTOL`. No learner
        call: the learner's side travelled with the weights."""
        reports = wait_all([w.sync_check.remote() for w in self.rollouts], "the rollout workers' sync checks",
                           self.cfg.run.timeout_s)
        problems = [f"rollout worker {i}: holds version {r['version']}, the learner {self.version}"
                    for i, r in enumerate(reports) if r["version"] != self.version]
        problems += [f"rollout worker {i}: {p}" for i, r in enumerate(reports) for p in r["problems"]]
        for line in problems[:5]:
            print(f"[ral] weights out of sync: {line}", flush=True)
        return not problems

    def _save_checkpoint(self, step: int) -> str:
        """Written to a partial directory, renamed into place once complete, then retention (run.keep_*). A run
        directory on an object store: each learner rank uploads its own files, then the commit writes the marker."""
        path, upload = self.run.partial_checkpoint_dir(step), self.run.checkpoint_upload_url(step)
        uploaded = wait_all([learner.save_checkpoint.remote(str(path), upload) for learner in self.learners],
                            f"checkpoint of step {step}", self.cfg.run.timeout_s)
        state = {"step": step, "version": self.version, "next_step": step + 1}
        return self.run.commit_checkpoint(step, state, self.cfg.run, uploaded)

    def restore(self, checkpoint: str) -> int:
        """Every learner loads ``checkpoint`` (a URL: each downloads it first); returns the step to continue at."""
        versions = wait_all([learner.load_checkpoint.remote(str(checkpoint)) for learner in self.learners],
                            f"learners to load {checkpoint}", self.cfg.run.timeout_s)
        self.version = versions[0]
        self._sync_weights()
        return self.run.checkpoint_state(checkpoint)["next_step"]

    def _heatmaps(self, step: int) -> None:
        if not self.heatmap_samples:
            return
        timeout, samples = self.cfg.run.timeout_s, self.heatmap_samples
        if self.cfg.rollout.resolved_attention_on == "learner":  # no transformers copy beside vLLM: vLLM answers,
            answers = self.rollouts[0].greedy_answers.options(num_returns=2).remote(samples)  # the learner draws (every rank: ZeRO-3)
            images = wait_all([lr.heatmaps.remote(samples, *answers) for lr in self.learners], "heatmaps", timeout)[0]
        else:
            images = wait_all([self.rollouts[0].heatmaps.remote(samples)], "heatmaps", timeout)[0]
        for sample_id, png in images:
            self.run.write_heatmap(step, sample_id, png)

    def _advantages(self, step: int, batches: list[RewardBatch]) -> tuple[list[list[float]], int]:
        """Group advantages (RAL.md §2) cut into the learner ranks' shares like the trajectories; a non-finite
        reward gets advantage 0. Also the count of those."""
        G, ranks = self.cfg.rollout.group_size, self.cfg.learner.num_ranks
        rewards = torch.tensor([r.total for b in batches for r in b.results], dtype=torch.float32)
        finite = torch.isfinite(rewards)
        advantages = group_advantages(torch.where(finite, rewards, torch.zeros_like(rewards)), G)
        flat = torch.where(finite, advantages, torch.zeros_like(advantages)).tolist()
        per_rank: list[list[float]] = [[] for _ in range(ranks)]
        start = 0
        for b in batches:
            n = len(b.results)
            for r, share in enumerate(split_shards(flat[start : start + n], chunk_offset(b.accounting, G), ranks)):
                per_rank[r].extend(share)
            start += n
        short = [len(a) for a in per_rank if len(a) < self.cfg.learner.num_minibatches]
        if short:
            raise ValueError(f"step {step}: learner ranks got {[len(a) for a in per_rank]} trajectories, fewer than "
                             f"learner.num_minibatches ({self.cfg.learner.num_minibatches}) on some: raise "
                             "rollout.prompts_per_step or lower learner.num_ranks / num_minibatches")
        return per_rank, int((~finite).sum())

    # ------------------------------------------------------------------ the loop
    def run_steps(self, start_step: int = 0) -> list[dict]:
        c = self.cfg
        history = []
        pending = self._launch_step(start_step)
        t_run = time.time()
        metrics.record_run_start(c.run.steps)
        if start_step == 0:
            self.validation.run_before_training(self.version, self.rollouts, self.learners)
        for step in range(start_step, c.run.steps):
            record, phases, pending = self._run_step(step, pending)
            history.append(record)
            self.run.append_metrics(record)
            next_rollout = [chunk[0] for chunk in pending[0]] if step + 1 < c.run.steps else []
            metrics.record_step(record, phases, self.reward_terms, next_rollout)
            eta = (time.time() - t_run) / (step + 1 - start_step) * (c.run.steps - step - 1)
            print(self._progress_line(record, eta), flush=True)
            if self.validation.due(step):  # before the checkpoint: run.keep_best ranks it by this
                self.validation(step, self.version, self.rollouts, self.learners)
            if (step + 1) % c.run.heatmap_every == 0 or step == start_step or step + 1 == c.run.steps:
                self._heatmaps(step)
            if (step + 1) % c.run.checkpoint_every == 0 or step + 1 == c.run.steps:
                self._save_checkpoint(step)
        return history

    def _run_step(self, step: int, pending: tuple) -> tuple[dict, PhaseTimes, tuple]:
        """One step: rewards in, advantages, the learners' update, weight sync; the step record, its phase times and
        the next step's launched calls."""
        c, timeout = self.cfg, self.cfg.run.timeout_s
        t_step = time.time()
        chunks, reward_refs, t_launch = pending
        wait_all([chunk[0] for chunk in chunks], f"rollouts of step {step}", timeout)
        # launch → observed done (in one_step_off this overlaps the previous learn), and the time we blocked
        rollout_s, rollout_wait_s = time.time() - t_launch, time.time() - t_step
        t0 = time.time()  # reward_s: the wait for rewards once every rollout is in
        batches = wait_all(reward_refs, f"rewards of step {step}", timeout)
        results = [r for b in batches for r in b.results]
        accounting = self._account(step, batches, len(results))
        if not results:
            raise RuntimeError(f"step {step}: every prompt was skipped: {accounting['skipped']}")
        reward_s = time.time() - t0
        advantages, nonfinite = self._advantages(step, batches)

        if c.run.mode == "one_step_off" and step + 1 < c.run.steps:
            pending = self._launch_step(step + 1)  # samples with the weights of this step's start
        t0 = time.time()
        stats = wait_all([learner.train_step.remote(step, [chunk[1 + r] for chunk in chunks], advantages[r],
                                                    **self._learner_inputs(step, r))
                          for r, learner in enumerate(self.learners)], f"learner step {step}", timeout)[0]
        learn_s = time.time() - t0
        self.version += 1
        sync_s, sync_bytes = self._sync_weights()
        in_sync = self.weights_in_sync() if c.run.verify_sync else None
        if c.run.mode == "sync" and step + 1 < c.run.steps:
            pending = self._launch_step(step + 1)

        phases = PhaseTimes(rollout_s, rollout_wait_s, reward_s, learn_s, sync_s, time.time() - t_step)
        record = self._record(step, results, stats, phases, sync_bytes, nonfinite) | accounting | self._after_learn(step)
        if in_sync is not None:
            record["weights_in_sync"] = in_sync
        return record, phases, pending

    def _account(self, step: int, batches: list[RewardBatch], n_results: int) -> dict:
        """Every prompt scheduled this step is either trained on once or skipped with a reason."""
        G = self.cfg.rollout.group_size
        chunks = [b.accounting for b in batches]
        scheduled = [g for a in chunks for g in a.groups]
        skipped = {s.group: s for a in chunks for s in a.skipped}
        trained = n_results // G
        if sorted(scheduled) != list(range(self.cfg.rollout.prompts_per_step)) or \
                trained + len(skipped) != len(scheduled) or n_results % G:
            raise RuntimeError(f"step {step}: accounting broken: {len(scheduled)} prompts scheduled, {trained} "
                               f"trained, {len(skipped)} skipped, {n_results} trajectories for G={G}")
        restarted = sum(a.worker_restarted for a in chunks)
        if restarted:
            print(f"[ral] step {step}: {restarted} rollout batch(es) ran on a worker Ray had restarted; it loaded "
                  f"weights v{self.version} before sampling", flush=True)
        return {
            "prompts_scheduled": len(scheduled), "prompts_trained": trained, "prompts_skipped": len(skipped),
            "skipped": [{"group": g, "id": s.sample_id, "reason": s.reason} for g, s in sorted(skipped.items())],
            "rollout_retries": restarted,
            **logprob_mismatch([a.engine_stats for a in chunks]),  # vllm engine: logprob_mismatch(_max)
        }

    def _record(self, step: int, results: list[RewardResult], stats: LearnerStepStats, phases: PhaseTimes,
                sync_bytes: int, nonfinite: int) -> dict:
        notes = Counter(f"{term}:{why}" for r in results for term, why in r.notes.items())
        record = {
            "step": step, "policy_version": self.version, "n_trajectories": len(results),
            "reward_mean": float(np.mean([r.total for r in results])),
            "accuracy": float(np.mean([r.accuracy for r in results])),
            "per_type": per_type_summary(results),
            "attention_on_target": _nanmean([r.attention_on_target for r in results]),
            **{f"reward_{k}": float(np.mean([r.terms[k] for r in results])) for k in results[0].terms},
            **stats.as_record(), "nonfinite_rewards": nonfinite, **dataclasses.asdict(phases),
            "sync_bytes": sync_bytes, "reward_notes": dict(notes),
        }
        if stats.warnings:
            record["warnings"] = stats.warnings
        return record

    def _progress_line(self, r: dict, eta: float) -> str:
        return (f"[ral] step {r['step'] + 1}/{self.cfg.run.steps} v{r['policy_version']} "
                f"reward {r['reward_mean']:.3f} (task {r.get('reward_task', 0):.3f} fmt {r.get('reward_format', 0):.3f}) "
                f"acc {r['accuracy']:.3f} kl {r['kl']:.4f} attn_jsd {r['attn_jsd']:.2e} "
                f"| rollout {r['rollout_s']:.1f}s reward {r['reward_s']:.1f}s learn {r['learn_s']:.1f}s "
                f"sync {r['sync_s']:.2f}s | ETA {format_eta(eta)}")
