"""Validation inside the RL job (``run.val_every``, ``run.val_before_train``, ``run.val_samples``): the controller's
side. The first ``val_samples`` of the val split are sharded over the rollout workers, which decode them greedily
with the weights they hold (no extra model copy) and score them (`RolloutWorker.validate`); beside vLLM with
``rollout.attention_on`` learner (no transformers copy in the rollout workers) vLLM decodes and every learner rank
runs the forward that gives the attention rows (`Learner.validation_rows`; ZeRO-3 gathers in it), rank 0 scores.
The record goes to metrics.jsonl (``{"kind": "val", ...}``, and so to the trackers) and Prometheus.
"""

from __future__ import annotations

import time

import numpy as np

from ral_dist.config import RLJobConfig
from ral_dist.data import Sample
from ral_dist.evaluation.validation import val_record
from ral_dist.rewards import reward_terms
from ral_dist.runtime import metrics
from ral_dist.runtime.ray_cluster import wait_all
from ral_dist.runtime.run_dir import RunDir

LEARNER_CHUNK = 16  # samples per learner forward when the learner scores (bounds its activation memory)


def validation_samples(cfg: RLJobConfig) -> list[Sample]:
    """The first ``run.val_samples`` of the val split (ids and paths: the workers decode the media); none, with a
    note, when validation is off or the data has no val split (never the training split)."""
    if not cfg.run.validates:
        return []
    from ral_dist.data.readers import read_split

    try:
        return read_split(cfg.data, "val")[0][: cfg.run.val_samples]
    except FileNotFoundError as exc:
        print(f"[ral] validation is off: the data has no val split ({exc})", flush=True)
        return []


class Validation:
    def __init__(self, cfg: RLJobConfig, run_dir: RunDir):
        self.cfg, self.run = cfg, run_dir
        self.samples = validation_samples(cfg)
        self.terms = reward_terms(cfg.reward)
        self.best: float | None = None
        self._resumed = False

    def due(self, step: int) -> bool:
        every = self.cfg.run.val_every
        return bool(self.samples) and every is not None and (step % every == 0 or step + 1 == self.cfg.run.steps)

    def run_before_training(self, version: int, rollouts: list, learners: list) -> None:
        if self.samples and self.cfg.run.val_before_train:
            self(-1, version, rollouts, learners)

    def __call__(self, step: int, version: int, rollouts: list, learners: list) -> dict:
        """Validate the policy the rollout workers hold after ``step`` (-1: before the first); writes the record."""
        if not self._resumed:  # a resumed run's best so far (read once its redone steps' rows are dropped)
            done = [a for a in self.run.val_accuracy().values() if a is not None]
            self.best, self._resumed = (max(done) if done else None), True
        t0 = time.time()
        rows = (self._rows_from_learners(rollouts, learners) if self.cfg.rollout.resolved_attention_on == "learner"
                else self._rows_from_rollouts(rollouts))
        record = val_record(step, version, rows, self.terms, time.time() - t0)
        if record["accuracy"] is not None:
            self.best = record["accuracy"] if self.best is None else max(self.best, record["accuracy"])
        record["best_accuracy"] = self.best
        self.run.append_metrics(record)
        metrics.record_validation(record, self.best, self.cfg.run.val_alert_drop)
        print(self._line(record), flush=True)
        return record

    def _shards(self, n: int) -> list[list[Sample]]:
        return [[self.samples[i] for i in part] for part in np.array_split(np.arange(len(self.samples)), n) if len(part)]

    def _rows_from_rollouts(self, rollouts: list) -> list[dict]:
        shards = wait_all([w.validate.remote(shard) for w, shard in zip(rollouts, self._shards(len(rollouts)),
                                                                        strict=False)],
                          "validation on the rollout workers", self.cfg.run.timeout_s)
        return [row for shard in shards for row in shard]

    def _rows_from_learners(self, rollouts: list, learners: list) -> list[dict]:
        chunks = [shard[i : i + LEARNER_CHUNK] for shard in self._shards(len(rollouts))
                  for i in range(0, len(shard), LEARNER_CHUNK)]
        calls = []
        for k, chunk in enumerate(chunks):
            answers = rollouts[k % len(rollouts)].greedy_answers.options(num_returns=2).remote(chunk)
            calls.append([lr.validation_rows.remote(chunk, *answers) for lr in learners])  # every rank, in order
        rows = wait_all([call[0] for call in calls], "validation rows from the learners", self.cfg.run.timeout_s)
        wait_all([ref for call in calls for ref in call[1:]], "the other learner ranks' validation forwards",
                 self.cfg.run.timeout_s)
        return [row for chunk in rows for row in chunk]

    def _line(self, r: dict) -> str:
        def f(key: str) -> str:
            return "n/a" if r.get(key) is None else f"{r[key]:.3f}"

        when = "before training" if r["step"] < 0 else f"after step {r['step'] + 1}/{self.cfg.run.steps}"
        return (f"[ral] validation {when} (v{r['policy_version']}, n={r['n']}): accuracy {f('accuracy')} "
                f"(best {f('best_accuracy')}) format {f('format_rate')} on-target {f('attention_on_target')} "
                f"(chance {f('target_fraction')}) length {f('response_length')} | {r['val_s']:.1f}s")
