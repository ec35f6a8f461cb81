import math

import pytest
import torch

from ral_dist.algorithms.aggregation import aggregate_tokens, masked_mean
from ral_dist.algorithms.policy_loss import clipped_surrogate, k3_kl

# 2 x 3 example, clip eps 0.2. Row 0: A = +1; row 1: A = -2, last token masked.
RATIOS = torch.tensor([[0.9, 1.5, 0.5], [0.5, 1.5, 1.1]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])
ADV = torch.tensor([1.0, -2.0])
# per-token loss -min(r A, clip(r) A):
#   row 0: r=0.9 -> -0.9 ; r=1.5 -> -min(1.5, 1.2) = -1.2 (clipped) ; r=0.5 -> -min(0.5, 0.8) = -0.5
#   row 1: r=0.5 -> -min(-1.0, -1.6) = 1.6 (clipped) ; r=1.5 -> -min(-3.0, -2.4) = 3.0 ; masked
TOKEN_MEAN = (-0.9 - 1.2 - 0.5 + 1.6 + 3.0) / 5  # 0.4
SEQ_MEAN = ((-0.9 - 1.2 - 0.5) / 3 + (1.6 + 3.0) / 2) / 2  # 0.716667


def _logps():
    old = torch.log(torch.tensor([[0.3, 0.2, 0.4], [0.6, 0.1, 0.5]]))
    logp = (old + torch.log(RATIOS)).requires_grad_(True)
    return logp, old


def test_token_mean_hand_value_and_stats():
    logp, old = _logps()
    loss, stats = clipped_surrogate(logp, old, ADV, MASK, clip_eps=0.2, mode="token_mean")
    assert loss.item() == pytest.approx(TOKEN_MEAN, abs=1e-6)
    assert TOKEN_MEAN == pytest.approx(0.4)
    assert stats["clip_fraction"] == pytest.approx(2 / 5)
    assert stats["ratio_mean"] == pytest.approx((0.9 + 1.5 + 0.5 + 0.5 + 1.5) / 5, abs=1e-6)


def test_seq_mean_differs_from_token_mean():
    logp, old = _logps()
    loss, _ = clipped_surrogate(logp, old, ADV, MASK, mode="seq_mean")
    assert loss.item() == pytest.approx(SEQ_MEAN, abs=1e-6)
    assert SEQ_MEAN == pytest.approx(0.716667, abs=1e-6) and abs(SEQ_MEAN - TOKEN_MEAN) > 0.3


def test_per_token_advantages_equal_broadcast():
    logp, old = _logps()
    a, _ = clipped_surrogate(logp, old, ADV, MASK)
    b, _ = clipped_surrogate(logp, old, ADV[:, None].expand(2, 3).clone(), MASK)
    assert torch.equal(a, b)


def test_gradient_zero_on_clipped_tokens_only():
    logp, old = _logps()
    loss, _ = clipped_surrogate(logp, old, ADV, MASK)
    loss.backward()
    # d/dlogp of -r*A/N is -r*A/N where the unclipped branch is active, 0 where clipped or masked.
    expected = torch.tensor([[-0.9, 0.0, -0.5], [0.0, 3.0, 0.0]]) / 5
    torch.testing.assert_close(logp.grad, expected, rtol=0, atol=1e-6)


def test_masked_garbage_does_not_leak():
    logp, old = _logps()
    garbage = logp.detach().clone()
    garbage[1, 2] = float("nan")
    garbage.requires_grad_(True)
    loss, _ = clipped_surrogate(garbage, old, ADV, MASK)
    loss.backward()
    assert loss.item() == pytest.approx(TOKEN_MEAN, abs=1e-6)
    assert torch.isfinite(garbage.grad).all()


def test_k3_kl_exact_values():
    logp = torch.log(torch.tensor([0.5, 0.25, 0.3]))
    ref = torch.log(torch.tensor([0.25, 0.5, 0.3]))
    kl = k3_kl(logp, ref)
    # d = ref - logp: ln 0.5 -> 0.5 - ln 0.5 - 1 ; ln 2 -> 2 - ln 2 - 1 ; 0 -> 0
    expected = torch.tensor([0.5 - math.log(0.5) - 1, 2 - math.log(2) - 1, 0.0])
    torch.testing.assert_close(kl, expected, rtol=0, atol=1e-6)
    assert kl[0].item() == pytest.approx(0.1931472, abs=1e-6)


def test_k3_kl_zero_when_equal_and_nonnegative():
    x = torch.randn(4, 7, generator=torch.Generator().manual_seed(0))
    assert torch.equal(k3_kl(x, x), torch.zeros(4, 7))
    y = torch.randn(4, 7, generator=torch.Generator().manual_seed(1))
    assert (k3_kl(x, y) >= 0).all()


def test_aggregation_empty_mask_is_zero():
    v = torch.ones(2, 3, requires_grad=True)
    m = torch.zeros(2, 3)
    for mode in ("token_mean", "seq_mean"):
        out = aggregate_tokens(v, m, mode)
        assert out.item() == 0.0
        out.backward()
        assert torch.isfinite(v.grad).all()
    assert masked_mean(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([True, False, True])).item() == 2.5
    torch.testing.assert_close(
        masked_mean(torch.tensor([[1.0, 3.0], [5.0, 7.0]]), torch.tensor([[1, 1], [0, 0]]), dim=-1),
        torch.tensor([2.0, 0.0]),
    )
    with pytest.raises(ValueError):
        aggregate_tokens(v, m, "sum")
