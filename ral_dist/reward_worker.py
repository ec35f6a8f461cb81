"""RewardWorker: scores every term of RAL.md §4 for a batch of trajectories; one bad sample never fails it."""

from __future__ import annotations

import math

from ral_dist import metrics
from ral_dist.algorithms import total_reward
from ral_dist.config import RLJobConfig
from ral_dist.evaluation import score_sample
from ral_dist.messages import RewardBatch, RewardResult, RolloutBatch, Trajectory
from ral_dist.models import adapter_for_checkpoint, get_adapter

# reward term name (RAL.md §4) → the metric of `score_sample` that computes it
TERM_METRIC = {"task": "accuracy", "format": "format_rate", "sparsity": "sparsity", "consistency": "consistency"}


class RewardWorker:
    def __init__(self, config: dict):
        self.cfg = RLJobConfig.model_validate(config)
        m = self.cfg.model
        if m.checkpoint:
            self.tokenizer = adapter_for_checkpoint(m.checkpoint).load_processor(m.checkpoint).tokenizer
        else:
            self.tokenizer = get_adapter(m.family).build_processor().tokenizer
        metrics.count_start("reward")

    def score_one(self, t: Trajectory) -> RewardResult:
        try:
            values, notes = score_sample(
                t.sample, t.text, t.response_ids, t.response_ids.new_ones(t.response_ids.shape), t.attention.float(),
                t.question_attention.float(), t.visual_positions, t.visual_grid, t.temporal_patch, self.tokenizer,
                self.cfg.data.prompt_mode)
        except Exception as exc:  # a malformed sample scores 0 on every term, with the reason
            values = {k: 0.0 for k in TERM_METRIC.values()} | {"attention_on_target": math.nan}
            notes = {term: f"error: {type(exc).__name__}: {exc}" for term in TERM_METRIC}
        terms = {term: float(values[metric]) for term, metric in TERM_METRIC.items()}
        terms = {k: (0.0 if not math.isfinite(v) else v) for k, v in terms.items()}
        notes = {term: notes[metric] for term, metric in TERM_METRIC.items() if metric in notes}
        return RewardResult(terms=terms, notes=notes, total=total_reward(terms, self.cfg.reward.weights),
                            accuracy=terms["task"], attention_on_target=float(values["attention_on_target"]))

    @metrics.timed("reward", record=lambda batch, worker: metrics.record_reward(batch.results, worker))
    def score(self, batch: RolloutBatch) -> RewardBatch:
        results = [self.score_one(t) for t in batch.trajectories]
        return RewardBatch(results, batch.groups, batch.skipped, batch.worker_restarted, batch.engine_stats)
