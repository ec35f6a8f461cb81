"""Trajectories as a rollout worker ships them, sampled from a random tiny student (learner and teacher tests)."""

import torch

from ral_dist.algorithms import group_advantages
from ral_dist.config import DataConfig
from ral_dist.data import GroundedVQAConfig
from ral_dist.data import generate as generate_samples
from ral_dist.messages.collate import trajectories_from_generation
from ral_dist.models import build_policy
from ral_dist.models.capture import use_capture_attention
from ral_dist.models.generation import generate
from ral_dist.models.prompting import visual_prompt

# Mixed-sign rewards for 2 prompts x G 4: both groups get positive and negative advantages.
REWARDS = (1.0, 0.0, 0.1, 0.9, 0.0, 1.0, 0.3, 0.0)


def sampled_trajectories(group: int, *, mode: str = "think", temperature: float = 1.0, max_new_tokens: int = 8,
                         rewards: tuple[float, ...] | None = None, wire_dtype=torch.float32, capture: bool = True):
    """2 prompts x ``group`` responses of the version-0 weights of the seed-0 tiny Qwen2.5-VL, and their group
    advantages (of ``rewards``; zeros without)."""
    adapter, model, processor = build_policy("qwen2_5_vl", None, {}, seed=0)
    use_capture_attention(model)
    samples = generate_samples(GroundedVQAConfig(), "train", 2)
    prompts = [visual_prompt(s, DataConfig(prompt={"mode": mode})) for s in samples]
    gen = generate(adapter, model, processor, prompts, num_samples=group, max_new_tokens=max_new_tokens,
                   temperature=temperature, capture=capture, capture_question=True, seed=0)
    expanded = [s for s in samples for _ in range(group)]
    trajs = trajectories_from_generation(gen, expanded, [i // group for i in range(len(expanded))], version=0,
                                         temporal_patch=2, max_new_tokens=max_new_tokens, wire_dtype=wire_dtype)
    advantages = group_advantages(torch.tensor(rewards), group).tolist() if rewards is not None else [0.0] * len(trajs)
    return trajs, advantages
