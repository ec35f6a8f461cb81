import math

import pytest
import torch

from ral_dist.algorithms.attention_loss import attention_jsd, ral_attention_loss
from ral_dist.algorithms.jsd import jsd

LN2 = math.log(2.0)


def _jsd_reference(p: list[float], q: list[float]) -> float:
    """Independent float64 closed form: sum over the support of ½ p ln(2p/(p+q)) + ½ q ln(2q/(p+q))."""
    total = 0.0
    for a, b in zip(p, q, strict=True):
        if a > 0:
            total += 0.5 * a * math.log(2 * a / (a + b))
        if b > 0:
            total += 0.5 * b * math.log(2 * b / (a + b))
    return total


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_matches_closed_form_with_zeros():
    pairs = [
        ([0.5, 0.5, 0.0], [0.0, 0.5, 0.5]),
        ([0.7, 0.2, 0.1], [0.1, 0.3, 0.6]),
        ([0.25, 0.25, 0.25, 0.25], [0.4, 0.0, 0.6, 0.0]),
    ]
    for p, q in pairs:
        got = jsd(torch.tensor(p, dtype=torch.float64), torch.tensor(q, dtype=torch.float64))
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(_jsd_reference(p, q), abs=1e-6)
    # first pair by hand: m = (.25, .5, .25), KL(p||m) = KL(q||m) = ½ ln 2
    assert _jsd_reference(*pairs[0]) == pytest.approx(0.5 * LN2)


def test_properties():
    p = torch.softmax(torch.randn(6, 9, generator=_gen(0)), -1)
    q = torch.softmax(torch.randn(6, 9, generator=_gen(1)), -1)
    d = jsd(p, q)
    assert d.shape == (6,)
    assert torch.equal(jsd(p, p), torch.zeros(6))
    torch.testing.assert_close(d, jsd(q, p), rtol=0, atol=1e-7)
    assert (d >= 0).all() and (d <= LN2 + 1e-6).all()
    onehot = torch.eye(4)
    assert jsd(onehot[0], onehot[3]).item() == pytest.approx(LN2, abs=1e-6)
    # reduces the requested dim
    assert jsd(p.T, q.T, dim=0).shape == (6,)


def test_gradient_matches_analytic_form():
    z = torch.randn(3, 5, generator=_gen(2), requires_grad=True)
    q = torch.softmax(torch.randn(3, 5, generator=_gen(3)), -1)
    p = torch.softmax(z, -1)
    jsd(p, q).sum().backward()
    p64, q64 = p.detach().double(), q.double()
    g = 0.5 * torch.log(2 * p64 / (p64 + q64))  # d JSD / d p_i
    expected = p64 * (g - (p64 * g).sum(-1, keepdim=True))  # J_softmax^T g
    torch.testing.assert_close(z.grad.double(), expected, rtol=0, atol=1e-6)
    assert expected.abs().max() > 1e-3  # the check is not vacuous


def test_gradient_vanishes_at_p_equals_q():
    z = torch.randn(4, 7, generator=_gen(4), requires_grad=True)
    p = torch.softmax(z, -1)
    jsd(p, p.detach().clone()).sum().backward()
    assert z.grad.abs().max().item() < 1e-7


def test_gradient_finite_with_zero_support():
    # future positions of an attention row are exact zeros (softmax of -inf)
    z = torch.tensor([0.3, -1.0, 0.5, float("-inf")], requires_grad=True)
    p = torch.softmax(z, -1)
    q = torch.tensor([0.0, 0.5, 0.25, 0.25])
    jsd(p, q).backward()
    assert torch.isfinite(z.grad[:3]).all() and z.grad[3].item() == 0.0


def _step_and_measure(adv: float) -> tuple[float, float]:
    z = torch.randn(1, 1, 6, generator=_gen(5), requires_grad=True)
    p_old = torch.softmax(torch.randn(1, 1, 6, generator=_gen(6)), -1)
    before = jsd(torch.softmax(z, -1), p_old).item()
    loss = ral_attention_loss(torch.softmax(z, -1), p_old, torch.ones(1, 1), torch.tensor([adv]))
    loss.backward()
    with torch.no_grad():
        after = jsd(torch.softmax(z - 0.5 * z.grad, -1), p_old).item()
    return before, after


def test_positive_advantage_pulls_toward_old_negative_pushes_away():
    before, after = _step_and_measure(+1.0)
    assert after < before
    before, after = _step_and_measure(-1.0)
    assert after > before


def _rows():
    """(0,0) disjoint one-hots -> ln 2 ; (0,1) equal -> 0 ; (1,0) half overlap -> ½ ln 2 ; (1,1) masked."""
    p_theta = torch.tensor([[[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], [[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]]])
    p_old = torch.tensor([[[0.0, 0.0, 1.0], [0.2, 0.3, 0.5]], [[0.0, 0.5, 0.5], [0.9, 0.1, 0.0]]])
    return p_theta.requires_grad_(True), p_old.requires_grad_(True), torch.tensor([[1, 1], [1, 0]])


def test_ral_attention_loss_hand_values_and_stopgrad():
    p_theta, p_old, row_mask = _rows()
    adv = torch.tensor([1.0, -3.0])
    token = ral_attention_loss(p_theta, p_old, row_mask, adv, mode="token_mean")
    assert token.item() == pytest.approx((LN2 + 0.0 - 3 * 0.5 * LN2) / 3, abs=1e-6)
    seq = ral_attention_loss(p_theta, p_old, row_mask, adv, mode="seq_mean")
    assert seq.item() == pytest.approx(((LN2 + 0.0) / 2 + (-3 * 0.5 * LN2)) / 2, abs=1e-6)
    per_row = ral_attention_loss(p_theta, p_old, row_mask, torch.tensor([[1.0, 1.0], [-3.0, 5.0]]))
    assert per_row.item() == pytest.approx(token.item(), abs=1e-7)
    token.backward()
    assert p_old.grad is None and p_theta.grad is not None


def test_attention_jsd_is_unweighted_mean():
    p_theta, p_old, row_mask = _rows()
    out = attention_jsd(p_theta, p_old, row_mask)
    assert out.item() == pytest.approx((LN2 + 0.0 + 0.5 * LN2) / 3, abs=1e-6)
    out.backward()
    assert p_old.grad is None
