import math

import pytest
import torch

from ral_dist.algorithms.distill_loss import distill_loss, reverse_kl_full, reverse_kl_topk
from ral_dist.algorithms.ral_loss import LossTerms

LN2 = math.log(2.0)


def test_topk_with_k_equal_v_matches_full():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 7, generator=g)
    teacher = torch.log_softmax(torch.randn(2, 3, 7, generator=g), -1)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    ids = torch.argsort(teacher, dim=-1, descending=True)
    full = reverse_kl_full(student, teacher, mask)
    topk = reverse_kl_topk(student, ids, teacher.gather(-1, ids), mask)
    assert full.item() > 0.05
    assert topk.item() == pytest.approx(full.item(), abs=1e-6)


def test_kl_of_identical_distributions_is_zero():
    logits = torch.randn(2, 4, 9, generator=torch.Generator().manual_seed(1))
    teacher = torch.log_softmax(logits, -1)
    mask = torch.ones(2, 4)
    assert abs(reverse_kl_full(logits, teacher, mask).item()) < 1e-6
    top = torch.topk(teacher, k=3, dim=-1)
    assert abs(reverse_kl_topk(logits, top.indices, top.values, mask).item()) < 1e-6


def test_hand_values_three_token_vocab():
    student = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))
    teacher = torch.log(torch.tensor([[[0.25, 0.5, 0.25]]]))
    mask = torch.ones(1, 1)
    # KL = .5 ln 2 + .25 ln .5 + 0 = .25 ln 2
    assert reverse_kl_full(student, teacher, mask).item() == pytest.approx(0.25 * LN2, abs=1e-6)
    # k = 1 (teacher top token id 1): buckets student (.25, .75), teacher (.5, .5)
    got = reverse_kl_topk(student, torch.tensor([[[1]]]), teacher[..., 1:2], mask)
    assert got.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), abs=1e-6)


def test_gradient_reaches_student_only():
    student = torch.randn(1, 2, 5, generator=torch.Generator().manual_seed(2), requires_grad=True)
    teacher = torch.log_softmax(torch.randn(1, 2, 5), -1).requires_grad_(True)
    top = torch.topk(teacher.detach(), k=2, dim=-1)
    tl = top.values.clone().requires_grad_(True)
    (
        reverse_kl_full(student, teacher, torch.ones(1, 2))
        + reverse_kl_topk(student, top.indices, tl, torch.ones(1, 2))
    ).backward()
    assert teacher.grad is None and tl.grad is None and student.grad.abs().sum() > 0


def _grpo() -> LossTerms:
    t = torch.tensor(0.7)
    return LossTerms(t, t, torch.tensor(0.0), torch.tensor(0.0), 0.0, 1.0, 0.0, 0.0)


def test_distill_loss_combination():
    rkl, ajsd = torch.tensor(0.3), torch.tensor(0.2)
    kd = distill_loss(_grpo(), rkl, None, mu=2.0, gamma_attn=0.0)
    assert torch.equal(kd.total, torch.tensor(0.7) + 2.0 * rkl) and kd.attn_jsd.item() == 0.0
    full = distill_loss(_grpo(), rkl, ajsd, mu=2.0, gamma_attn=0.5)
    assert full.total.item() == pytest.approx(0.7 + 0.6 + 0.1)
    with pytest.raises(ValueError):
        distill_loss(_grpo(), rkl, None, gamma_attn=0.5)
