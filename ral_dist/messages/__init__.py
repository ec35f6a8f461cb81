"""The records that flow between the actors, and their padded batch layouts."""

from ral_dist.messages.rewards import RewardBatch, RewardResult, per_type_summary
from ral_dist.messages.stats import LearnerStepStats, PhaseTimes
from ral_dist.messages.trajectory import (
    BehaviourPolicy,
    ChunkAccounting,
    EncodedPrompt,
    Response,
    SkippedPrompt,
    Trajectory,
    chunk_offset,
    join_shards,
    split_shards,
)

__all__ = ["BehaviourPolicy", "ChunkAccounting", "EncodedPrompt", "LearnerStepStats", "PhaseTimes", "Response",
           "RewardBatch", "RewardResult", "SkippedPrompt", "Trajectory", "chunk_offset", "join_shards",
           "per_type_summary", "split_shards"]
