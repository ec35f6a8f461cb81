"""RewardWorker: scores every registered reward term (`ral_dist.rewards`, RAL.md §4) of a rollout chunk; one bad
sample scores 0 on what it cannot provide, with the reason, and never fails the batch."""

from __future__ import annotations

import math

from ral_dist.config import RLJobConfig
from ral_dist.messages import RewardBatch, RewardResult, RolloutBatch, Trajectory
from ral_dist.models import adapter_for_checkpoint, get_adapter
from ral_dist.rewards import ResponseView, score_terms, total_reward
from ral_dist.runtime import metrics


class RewardWorker:
    def __init__(self, config: dict):
        self.cfg = RLJobConfig.model_validate(config)
        m = self.cfg.model
        if m.checkpoint:
            self.tokenizer = adapter_for_checkpoint(m.checkpoint).load_processor(m.checkpoint).tokenizer
        else:
            self.tokenizer = get_adapter(m.family).build_processor().tokenizer
        metrics.count_start("reward")

    def _reward_one(self, t: Trajectory) -> RewardResult:
        view = ResponseView(t.sample, t.response.text, t.response.ids, t.behaviour.attention.float(),
                            t.behaviour.question_attention.float(), t.prompt.visual_positions, t.prompt.visual_grid,
                            t.prompt.temporal_patch, self.tokenizer, self.cfg.data.prompt_mode)
        terms, notes = score_terms(view)
        try:
            on_target = view.grounding()["attention_on_target"]
        except Exception:  # noqa: BLE001 — a malformed sample's regions: no grounding figure, never a failed batch
            on_target = math.nan
        return RewardResult(terms=terms, notes=notes, total=total_reward(terms, self.cfg.reward.weights),
                            accuracy=terms["task"], attention_on_target=float(on_target))

    @metrics.timed("reward", record=lambda batch, worker: metrics.record_reward(batch.results, worker))
    def reward_batch(self, batch: RolloutBatch) -> RewardBatch:
        return RewardBatch([self._reward_one(t) for t in batch.trajectories], batch.accounting)
