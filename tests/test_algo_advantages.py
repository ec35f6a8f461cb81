import math

import pytest
import torch

from ral_dist.algorithms.advantages import group_advantages


def test_hand_values_unbiased_std():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, group_size=4)
    # group 1: mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = sqrt(1/3) -> A = 0.5 / (0.57735 + 1e-6) = 0.866024
    a = 0.5 / (math.sqrt(1.0 / 3.0) + 1e-6)
    assert a == pytest.approx(0.866024, abs=1e-6)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    assert adv.dtype == torch.float32 and adv.shape == (8,)


def test_hand_values_uneven_group():
    adv = group_advantages(torch.tensor([2.0, 4.0, 9.0]), group_size=3, eps=0.0)
    # mean 5, deviations -3, -1, 4, unbiased var (9 + 1 + 16) / 2 = 13
    s = math.sqrt(13.0)
    torch.testing.assert_close(adv, torch.tensor([-3 / s, -1 / s, 4 / s]), rtol=0, atol=1e-6)


def test_constant_group_is_exactly_zero():
    adv = group_advantages(torch.tensor([0.3, 0.3, 0.3, 0.7, 0.7, 0.7]), group_size=3)
    assert torch.equal(adv, torch.zeros(6))


def test_group_of_one_gives_zero_not_nan():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.5]), group_size=1)
    assert torch.equal(adv, torch.zeros(3))


def test_integer_rewards_are_cast_to_fp32():
    adv = group_advantages(torch.tensor([1, 0]), group_size=2, eps=0.0)
    # unbiased std of [1, 0] is sqrt(0.5)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5]) / math.sqrt(0.5))


def test_rejects_ragged_groups():
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(5), group_size=2)
