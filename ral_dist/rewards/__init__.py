"""Reward terms by name (RAL.md §4): the registry every reader goes through, the response view they score, and
the user's reward functions."""

from ral_dist.rewards.answer_span import answer_token_mask
from ral_dist.rewards.custom import CustomRewardError, custom_score, load_reward_function, parse_reward_path
from ral_dist.rewards.registry import (
           PAPER_REWARD_WEIGHTS,
           RESERVED_TERM_NAMES,
           REWARD_TERMS,
           TASK_TERMS,
           RewardTerm,
           reward_terms,
           reward_weights,
           score_terms,
           total_reward,
)
from ral_dist.rewards.response import ResponseView

__all__ = ["PAPER_REWARD_WEIGHTS", "RESERVED_TERM_NAMES", "REWARD_TERMS", "TASK_TERMS", "CustomRewardError", "ResponseView", "RewardTerm",
           "answer_token_mask", "custom_score", "load_reward_function", "parse_reward_path", "reward_terms",
           "reward_weights", "score_terms", "total_reward"]
