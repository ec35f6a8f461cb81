"""Group-relative advantages (RAL.md §2)."""

from __future__ import annotations

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-6) -> Tensor:
    """GRPO advantages A_i = (r_i - mean_g) / (std_g + eps).

    rewards: [N*G], contiguous groups (the G responses of prompt 0, then of prompt 1, ...).
    Returns [N*G] fp32.

    std is the unbiased sample std (correction=1), as torch.std in veRL and TRL (project choice).
    A group whose rewards are all equal (this includes G == 1) gets exactly 0: no learning signal, no NaN.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    r = rewards.detach().float().reshape(-1)
    if r.numel() % group_size != 0:
        raise ValueError(f"{r.numel()} rewards do not split into groups of {group_size}")
    groups = r.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    if group_size > 1:
        std = groups.std(dim=1, correction=1, keepdim=True)
    else:
        std = torch.zeros_like(mean)
    adv = (groups - mean) / (std + eps)
    # Rounding in mean() can leave ~1e-8 residues in a constant group; force exact zeros.
    constant = groups.amax(dim=1, keepdim=True) == groups.amin(dim=1, keepdim=True)
    adv = torch.where(constant, torch.zeros_like(adv), adv)
    return adv.reshape(-1)
