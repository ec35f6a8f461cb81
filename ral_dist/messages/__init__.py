"""The records that flow between the actors, and their padded batch layouts."""

from ral_dist.messages.rewards import RewardBatch, RewardResult
from ral_dist.messages.stats import LearnerStepStats, PhaseTimes
from ral_dist.messages.trajectory import (
    BehaviourPolicy,
    ChunkAccounting,
    EncodedPrompt,
    Response,
    RolloutBatch,
    SkippedPrompt,
    Trajectory,
    flatten,
)

__all__ = ["BehaviourPolicy", "ChunkAccounting", "EncodedPrompt", "LearnerStepStats", "PhaseTimes", "Response",
           "RewardBatch", "RewardResult", "RolloutBatch", "SkippedPrompt", "Trajectory", "flatten"]
