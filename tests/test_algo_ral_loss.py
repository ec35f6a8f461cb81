import pytest
import torch

from ral_dist.algorithms.ral_loss import ral_loss

B, T, R, K = 2, 5, 4, 6


def _inputs(seed: int = 0, same_attention: bool = False):
    g = torch.Generator().manual_seed(seed)
    logp = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    old_logp = (logp.detach() + 0.3 * torch.randn(B, T, generator=g)).requires_grad_(True)
    ref_logp = (logp.detach() + 0.3 * torch.randn(B, T, generator=g)).requires_grad_(True)
    token_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    adv = torch.tensor([0.8, -1.3])
    z = torch.randn(B, R, K, generator=g).requires_grad_(True)
    z_old = z.detach() if same_attention else torch.randn(B, R, K, generator=g)
    p_old = torch.softmax(z_old, -1).requires_grad_(True)
    row_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    return logp, old_logp, ref_logp, token_mask, adv, z, p_old, row_mask


def test_lambda_zero_is_exactly_grpo():
    logp, old, ref, tm, adv, z, p_old, rm = _inputs()
    grpo = ral_loss(logp, old, ref, tm, adv, None, None, None, beta=0.04, lambda_attn=0.0)
    assert torch.equal(grpo.total, grpo.policy + 0.04 * grpo.kl)
    assert grpo.attn.item() == 0.0 and grpo.attn_jsd_mean == 0.0
    # attention given but lambda 0: logged, never added
    logged = ral_loss(logp, old, ref, tm, adv, torch.softmax(z, -1), p_old, rm, beta=0.04, lambda_attn=0.0)
    assert torch.equal(logged.total, grpo.total)
    assert logged.attn.item() != 0.0 and logged.attn_jsd_mean > 0.0


def test_components_add_up_and_stop_gradients():
    logp, old, ref, tm, adv, z, p_old, rm = _inputs()
    out = ral_loss(logp, old, ref, tm, adv, torch.softmax(z, -1), p_old, rm, beta=0.04, lambda_attn=5.0)
    assert torch.equal(out.total, out.policy + 0.04 * out.kl + 5.0 * out.attn)
    assert out.kl.item() > 0 and out.attn.item() != 0
    assert 0.0 <= out.clip_fraction <= 1.0 and out.ratio_mean > 0
    assert out.kl_mean == pytest.approx(out.kl.item())
    out.total.backward()
    assert p_old.grad is None and old.grad is None and ref.grad is None
    assert logp.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


def test_attention_term_backprops_alone():
    logp, old, ref, tm, adv, z, p_old, rm = _inputs()
    out = ral_loss(logp, old, ref, tm, adv, torch.softmax(z, -1), p_old, rm)
    out.attn.backward()
    assert logp.grad is None and z.grad.norm() > 0


def test_attention_gradient_vanishes_when_theta_equals_old():
    logp, old, ref, tm, adv, z, p_old, rm = _inputs(same_attention=True)
    out = ral_loss(logp, old, ref, tm, adv, torch.softmax(z, -1), p_old, rm)
    out.attn.backward()
    assert z.grad.norm().item() < 1e-7


def test_seq_mean_mode_and_missing_inputs():
    logp, old, ref, tm, adv, z, p_old, rm = _inputs()
    tok = ral_loss(logp, old, ref, tm, adv, torch.softmax(z, -1), p_old, rm, mode="token_mean")
    seq = ral_loss(logp, old, ref, tm, adv, torch.softmax(z, -1), p_old, rm, mode="seq_mean")
    assert tok.policy.item() != pytest.approx(seq.policy.item())
    no_ref = ral_loss(logp, old, None, tm, adv, None, None, None, beta=0.0, lambda_attn=0.0)
    assert torch.equal(no_ref.total, no_ref.policy)
    with pytest.raises(ValueError):
        ral_loss(logp, old, ref, tm, adv, None, None, None, lambda_attn=1.0)
    with pytest.raises(ValueError):
        ral_loss(logp, old, None, tm, adv, None, None, None, beta=0.04, lambda_attn=0.0)


def test_lambda_zero_ignores_broken_attention():
    logp, old, ref, tm, adv, z, p_old, rm = _inputs()
    broken = torch.full((B, R, K), float("nan"))
    grpo = ral_loss(logp, old, ref, tm, adv, None, None, None, lambda_attn=0.0)
    logged = ral_loss(logp, old, ref, tm, adv, broken, p_old, rm, lambda_attn=0.0)
    assert torch.equal(logged.total, grpo.total)
