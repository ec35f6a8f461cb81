"""Truncated importance sampling (TIS): weights, truncation, and the weighted policy loss and its gradient."""

import math

import pytest
import torch

from ral_dist.algorithms import ral_loss, tis_weights
from ral_dist.algorithms.policy_loss import clipped_surrogate

# The 2 x 3 example of test_algo_policy_loss: ratios pi_theta / pi_old, A = (+1, -2), token (1, 2) masked.
RATIOS = torch.tensor([[0.9, 1.5, 0.5], [0.5, 1.5, 1.1]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -2.0])
OLD = torch.log(torch.tensor([[0.3, 0.2, 0.4], [0.6, 0.1, 0.5]]))
# learner-old / rollout probability of each sampled token; the masked one is huge and must not count
TIS_RATIOS = torch.tensor([[0.5, 3.0, 1.5], [4.0, 1.0, 100.0]])
CAP = 2.0
WEIGHTS = [[0.5, 2.0, 1.5], [2.0, 1.0, 1.0]]  # truncated at CAP; 1 on the masked token
# per-token loss -min(r A, clip(r) A) (see test_algo_policy_loss): [[-0.9, -1.2, -0.5], [1.6, 3.0, -]]
WEIGHTED_TOKEN_MEAN = (-0.9 * 0.5 - 1.2 * 2.0 - 0.5 * 1.5 + 1.6 * 2.0 + 3.0 * 1.0) / 5  # 0.52


def _inputs():
    logp = (OLD + torch.log(RATIOS)).requires_grad_(True)
    rollout = (OLD - torch.log(TIS_RATIOS)).requires_grad_(True)  # so exp(OLD - rollout) = TIS_RATIOS
    return logp, rollout


def test_equal_logprobs_give_weight_one_and_exactly_the_old_loss():
    logp, _ = _inputs()
    w, stats = tis_weights(OLD, OLD.clone(), MASK, CAP)
    assert torch.equal(w, torch.ones(2, 3))
    assert stats == {"tis_weight_mean": 1.0, "tis_ratio_max": 1.0, "tis_truncated_fraction": 0.0}
    plain, _ = clipped_surrogate(logp, OLD, ADV, MASK)
    weighted, _ = clipped_surrogate(logp, OLD, ADV, MASK, token_weights=w)
    assert torch.equal(plain, weighted)


def test_weights_truncate_at_the_cap_and_ignore_masked_tokens():
    _, rollout = _inputs()
    w, stats = tis_weights(OLD, rollout, MASK, CAP)
    torch.testing.assert_close(w, torch.tensor(WEIGHTS), rtol=0, atol=1e-6)
    assert not w.requires_grad  # detached: the weight is a constant of the step
    assert stats["tis_weight_mean"] == pytest.approx((0.5 + 2 + 1.5 + 2 + 1) / 5, abs=1e-6)  # 1.4
    assert stats["tis_ratio_max"] == pytest.approx(4.0, abs=1e-5)  # untruncated; the masked 100 excluded
    assert stats["tis_truncated_fraction"] == pytest.approx(2 / 5)


def test_weighted_loss_and_gradient_hand_values():
    logp, rollout = _inputs()
    w, _ = tis_weights(OLD, rollout, MASK, CAP)
    loss, _ = clipped_surrogate(logp, OLD, ADV, MASK, token_weights=w)
    assert loss.item() == pytest.approx(WEIGHTED_TOKEN_MEAN, abs=1e-6)
    assert WEIGHTED_TOKEN_MEAN == pytest.approx(0.52)
    loss.backward()
    # unweighted d/dlogp is [[-0.9, 0, -0.5], [0, 3.0, 0]] / 5 (0 where clipped or masked); each times its w
    expected = torch.tensor([[-0.9 * 0.5, 0.0, -0.5 * 1.5], [0.0, 3.0 * 1.0, 0.0]]) / 5
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-6)
    assert rollout.grad is None


def test_garbage_on_masked_tokens_does_not_leak():
    logp, rollout = _inputs()
    rollout = rollout.detach().clone()
    rollout[1, 2] = float("nan")
    w, stats = tis_weights(OLD, rollout, MASK, CAP)
    assert w[1, 2] == 1.0 and all(math.isfinite(v) for v in stats.values())
    loss, _ = clipped_surrogate(logp, OLD, ADV, MASK, token_weights=w)
    loss.backward()
    assert loss.item() == pytest.approx(WEIGHTED_TOKEN_MEAN, abs=1e-6) and torch.isfinite(logp.grad).all()


def test_ral_loss_weights_the_policy_term_only():
    torch.manual_seed(0)
    logp, rollout = _inputs()
    ref = OLD + 0.1
    p_old = torch.softmax(torch.randn(2, 3, 5), -1)
    p_theta = torch.softmax(torch.randn(2, 3, 5), -1)
    w, _ = tis_weights(OLD, rollout, MASK, CAP)
    args = (logp, OLD, ref, MASK, ADV, p_theta, p_old, MASK)
    plain = ral_loss(*args, beta=0.04, lambda_attn=1.0)
    weighted = ral_loss(*args, beta=0.04, lambda_attn=1.0, token_weights=w)
    assert weighted.policy.item() == pytest.approx(WEIGHTED_TOKEN_MEAN, abs=1e-6)
    assert plain.policy.item() == pytest.approx(0.4, abs=1e-6)
    assert torch.equal(weighted.kl, plain.kl) and torch.equal(weighted.attn, plain.attn)
    assert (weighted.total - plain.total).item() == pytest.approx(0.52 - 0.4, abs=1e-6)
