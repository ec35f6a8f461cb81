"""RewardWorker: scores every term of the job's reward registry (`ral_dist.rewards.reward_terms`, RAL.md §4) of a
rollout chunk; one bad sample, or a user reward function that fails, scores 0 on that term with the reason, and
never fails the batch."""

from __future__ import annotations

import logging
import math

from ral_dist.config import RLJobConfig
from ral_dist.messages import (
    ChunkAccounting,
    RewardBatch,
    RewardResult,
    Trajectory,
    chunk_offset,
    join_shards,
)
from ral_dist.models import adapter_for_checkpoint, get_adapter
from ral_dist.rewards import (
    CustomRewardError,
    ResponseView,
    load_reward_function,
    reward_terms,
    reward_weights,
    score_terms,
    total_reward,
)
from ral_dist.runtime import metrics

log = logging.getLogger(__name__)


class RewardWorker:
    def __init__(self, config: dict):
        self.cfg = RLJobConfig.model_validate(config)
        m = self.cfg.model
        if m.checkpoint:
            self.tokenizer = adapter_for_checkpoint(m.checkpoint).load_processor(m.checkpoint).tokenizer
        else:
            self.tokenizer = get_adapter(m.family).build_processor().tokenizer
        self.terms = reward_terms(self.cfg.reward)
        self.weights = reward_weights(self.cfg.reward)
        for spec in self.cfg.reward.custom:  # imported once, here; one that fails scores 0 (import_failed)
            try:
                load_reward_function(spec.path)
            except CustomRewardError as exc:
                log.warning("reward.custom %s: %s; the term scores 0 with reason import_failed", spec.name, exc)
        metrics.count_start("reward")

    def _reward_one(self, t: Trajectory) -> RewardResult:
        b = t.behaviour
        view = ResponseView(t.sample, t.response.text, t.response.ids,
                            b.attention.float() if b.attention is not None else None,
                            b.question_attention.float() if b.question_attention is not None else None,
                            t.prompt.visual_positions, t.prompt.visual_grid,
                            t.prompt.temporal_patch, t.prompt.n_frames, self.tokenizer, self.cfg.data.prompt.mode)
        terms, notes = score_terms(view, self.terms)
        try:
            on_target = view.grounding()["attention_on_target"]
        except Exception:  # noqa: BLE001 — a malformed sample's regions: no grounding figure, never a failed batch
            on_target = math.nan
        return RewardResult(terms=terms, notes=notes, total=total_reward(terms, self.weights), accuracy=terms["task"],
                            attention_on_target=float(on_target), qtype=t.sample.qtype,
                            problem_type=view.problem_type)

    @metrics.timed("reward", record=lambda batch, worker: metrics.record_reward(batch.results, worker))
    def reward_batch(self, accounting: ChunkAccounting, *shares: list[Trajectory]) -> RewardBatch:
        """Scores of a rollout chunk, given as the rollout worker returned it (its accounting, then each learner
        rank's share), in the chunk's trajectory order."""
        trajectories = join_shards(list(shares), chunk_offset(accounting, self.cfg.rollout.group_size))
        return RewardBatch([self._reward_one(t) for t in trajectories], accounting)
