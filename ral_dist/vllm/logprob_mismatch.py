"""The log-prob mismatch between the rollout engine (vLLM) and transformers, reported per step.

vLLM returns the log-prob of each sampled token under its sampling distribution (``processed_logprobs``: logit
bias on the banned visual tokens, then temperature, then top-p). The transformers replica's logits go through the
same steps here, so the difference is numerics alone. Rollout workers put the sums in their chunk's
``ChunkAccounting.engine_stats``; the controller's step record gets ``logprob_mismatch`` (mean |vLLM − HF| over
response tokens) and ``logprob_mismatch_max``. No vllm import here: the controller reads this module.
"""

from __future__ import annotations

import torch

# vLLM clamps logit_bias to [-100, 100]; e^-100 underflows fp32 sampling, so a biased token is never drawn.
BANNED_LOGIT_BIAS = -100.0


def sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float, banned: list[int],
                      greedy: bool, top_p_fn=None) -> torch.Tensor:
    """Log-probs [N, R] of ``tokens`` under vLLM's sampling distribution, from logits [N, R, V]."""
    x = logits.float().clone()
    if banned:
        x[..., banned] += BANNED_LOGIT_BIAS
    if not greedy:  # vLLM's greedy path reports log-probs before temperature
        x = x / temperature
        if top_p_fn is not None:
            x = top_p_fn(x.reshape(-1, x.shape[-1])).reshape(x.shape)
    return torch.log_softmax(x, -1).gather(-1, tokens[..., None]).squeeze(-1)


def mismatch_stats(engine_logprobs: torch.Tensor, hf_logprobs: torch.Tensor, mask: torch.Tensor) -> dict:
    diff = (engine_logprobs.float() - hf_logprobs.float()).abs() * mask
    return {"logprob_abs_diff_sum": float(diff.sum()), "logprob_tokens": int(mask.sum()),
            "logprob_abs_diff_max": float(diff.max()) if diff.numel() else 0.0}


def aggregate(engine_stats: list[dict]) -> dict:
    """Step-level metrics from the ``engine_stats`` of every chunk (empty for the hf engine)."""
    stats = [s for s in engine_stats if s and s.get("logprob_tokens")]
    if not stats:
        return {}
    tokens = sum(s["logprob_tokens"] for s in stats)
    return {"logprob_mismatch": sum(s["logprob_abs_diff_sum"] for s in stats) / tokens,
            "logprob_mismatch_max": max(s["logprob_abs_diff_max"] for s in stats)}
