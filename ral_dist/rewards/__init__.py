"""Reward terms by name (RAL.md §4): the registry every reader goes through, and the response view they score."""

from ral_dist.rewards.answer_span import answer_token_mask
from ral_dist.rewards.registry import (
           PAPER_REWARD_WEIGHTS,
           REWARD_TERMS,
           RewardTerm,
           score_terms,
           total_reward,
)
from ral_dist.rewards.response import ResponseView

__all__ = ["PAPER_REWARD_WEIGHTS", "REWARD_TERMS", "ResponseView", "RewardTerm", "answer_token_mask", "score_terms",
           "total_reward"]
