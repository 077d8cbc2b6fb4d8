"""GRPO maths against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from geor1.objectives.grpo_math import (
    aggregate,
    clipped_surrogate,
    group_advantages,
    kl_estimate,
    sequence_clipped_surrogate,
)


def test_group_advantages_by_hand():
    # group 1: rewards 1, 0, 0, 1 -> mean 0.5, unbiased std sqrt(1/3)
    # group 2: all equal -> zero advantage, never NaN
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv, scored = group_advantages(r, group_size=4, eps=1e-4)
    std = math.sqrt(1 / 3)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4)] * 1
    torch.testing.assert_close(adv[:4], torch.tensor([expected[0], expected[1], expected[1], expected[0]]))
    assert torch.equal(adv[4:], torch.zeros(4)) and scored.all()
    unscaled, _ = group_advantages(r, 4, scale=False)  # Dr. GRPO: r - mean
    torch.testing.assert_close(unscaled[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_unscored_samples_get_zero_advantage_and_leave_the_statistics():
    r = torch.tensor([1.0, float("nan"), 0.0, float("nan"), float("nan"), 5.0])  # G=3; group 2: one scored
    adv, scored = group_advantages(r, 3, eps=0.0)
    # group 1 scored: [1, 0] -> mean 0.5, unbiased std sqrt(0.5)
    torch.testing.assert_close(adv[:3], torch.tensor([0.5 / math.sqrt(0.5), 0.0, -0.5 / math.sqrt(0.5)]))
    assert torch.equal(adv[3:], torch.zeros(3)) and scored.tolist() == [True, False, True, False, False, True]
    assert not torch.isnan(adv).any()


def test_group_size_one_is_rejected():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(4), 1)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.0]])
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), torch.tensor([[0.5, -1.0]]))
    d = ref - logp  # [-0.5, 1.0]
    torch.testing.assert_close(
        kl_estimate(logp, ref, "k3"), torch.tensor([[math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]])
    )
    assert torch.all(kl_estimate(logp, ref, "k3") >= 0) and torch.equal(d, torch.tensor([[-0.5, 1.0]]))
    assert float(kl_estimate(logp, logp, "k3").abs().max()) == 0.0


def test_clipped_surrogate_by_hand():
    old = torch.zeros(2, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5], [1.0, 1.5, 0.5]]))  # ratios 1, 1.5, 0.5
    adv = torch.tensor([2.0, -1.0])
    loss, clipped = clipped_surrogate(logp, old, adv, epsilon=0.2)
    # A=2: min(r*2, clip(r)*2) = [2, 2.4, 1.0]; A=-1: min(-r, -clip(r)) = [-1, -1.5, -0.8]
    torch.testing.assert_close(loss, -torch.tensor([[2.0, 2.4, 1.0], [-1.0, -1.5, -0.8]]))
    assert clipped.tolist() == [[False, True, False], [False, False, True]]
    loss_hi, _ = clipped_surrogate(logp, old, adv, epsilon=0.2, epsilon_high=0.6)  # DAPO's clip-higher
    assert float(loss_hi[0, 1]) == pytest.approx(-3.0)


def test_aggregations_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert float(aggregate(per_token, mask, "grpo")) == pytest.approx((2.0 + 4.0) / 2)
    assert float(aggregate(per_token, mask, "dapo")) == pytest.approx(10.0 / 4)
    assert float(aggregate(per_token, mask, "dr_grpo", max_len=5)) == pytest.approx(10.0 / (2 * 5))


def test_truncated_is_weights_by_hand():
    from geor1.objectives.grpo_math import truncated_is_weights

    old = torch.log(torch.tensor([[0.5, 0.2, 0.9, 0.3]]))
    sampler = torch.log(torch.tensor([[0.25, 0.4, 0.3, 1.0]]))
    sampler[0, 3] = float("nan")  # a token the sampler gave no log-prob for keeps weight 1
    # ratios 0.5/0.25 = 2, 0.2/0.4 = 0.5, 0.9/0.3 = 3 -> capped at 2.5
    w = truncated_is_weights(old.requires_grad_(), sampler, cap=2.5)
    torch.testing.assert_close(w, torch.tensor([[2.0, 0.5, 2.5, 1.0]]))
    assert not w.requires_grad
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(old, sampler, cap=0.0)


def _gspo_case():
    """Three sequences: log-ratios [0.2, 0.4 | pad], [-0.1, 0.1, 0.3], [-0.5 | pad, pad]."""
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    log_ratio = torch.tensor([[0.2, 0.4, 9.0], [-0.1, 0.1, 0.3], [-0.5, -7.0, 3.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.2, -2.2], [-0.7, -0.1, -4.0]], dtype=torch.float64)
    logp = (old + log_ratio).requires_grad_()
    return logp, old, torch.tensor([2.0, -1.0, -1.0], dtype=torch.float64), mask


def test_sequence_clipped_surrogate_by_hand():
    """GSPO: s_i = exp(mean of the real tokens' log-ratios) -> e^0.3, e^0.1, e^-0.5 (padding ignored)."""
    logp, old, adv, mask = _gspo_case()
    loss, clipped = sequence_clipped_surrogate(logp, old, adv, mask, epsilon=0.2)
    # A=2, s=1.3499 -> min(2.6997, 1.2*2) = 2.4 (clipped); A=-1, s=1.1052 inside the range -> -1.1052;
    # A=-1, s=0.6065 -> min(-0.6065, -0.8) = -0.8 (clipped)
    expected = torch.tensor([-2.4, math.exp(0.1), 0.8], dtype=torch.float64).unsqueeze(1).expand(3, 3)
    torch.testing.assert_close(loss, expected)
    assert clipped.tolist() == [[True] * 3, [False] * 3, [True] * 3]
    # gradient (grpo aggregation over 3 sequences): clipped sequences none; sequence 2 -A*s/|y|/N on its tokens
    aggregate(loss, mask, "grpo").backward()
    g = math.exp(0.1) / 3 / 3
    torch.testing.assert_close(
        logp.grad, torch.tensor([[0, 0, 0], [g, g, g], [0, 0, 0]], dtype=torch.float64), atol=1e-12, rtol=1e-12
    )
    # clip-higher: s=1.3499 <= 1 + 0.4 is not clipped -> -2 * e^0.3
    loss_hi, _ = sequence_clipped_surrogate(logp, old, adv, mask, epsilon=0.2, epsilon_high=0.4)
    assert float(loss_hi[0, 0].detach()) == pytest.approx(-2 * math.exp(0.3))


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_sequence_and_token_levels_agree_on_policy(mode):
    """old == new (mu = 1): every ratio is 1 at both levels, and the losses and gradients are the same."""
    torch.manual_seed(0)
    mask = torch.rand(4, 6) > 0.3
    mask[:, 0] = True
    adv = torch.randn(4, dtype=torch.float64)
    grads, losses = [], []
    for level in ("token", "sequence"):
        torch.manual_seed(1)
        logp = (torch.randn(4, 6, dtype=torch.float64) - 1).requires_grad_()
        if level == "token":
            per_token, clipped = clipped_surrogate(logp, logp.detach(), adv)
        else:
            per_token, clipped = sequence_clipped_surrogate(logp, logp.detach(), adv, mask)
        assert not clipped.any()
        loss = aggregate(per_token, mask, mode, max_len=8)
        loss.backward()
        losses.append(loss.detach())
        grads.append(logp.grad)
    torch.testing.assert_close(losses[0], losses[1], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-12, rtol=1e-12)
    assert float(grads[0].abs().max()) > 0


def test_groups_with_equal_rewards_get_exactly_zero_advantage_and_are_not_informative():
    """Also with advantage_eps = 0 (0 / 0 was NaN before), and whatever rounding r - mean has."""
    from geor1.objectives.grpo_math import informative_groups

    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 1.0, 0.3, float("nan"), float("nan")])
    adv, _ = group_advantages(r, 3, eps=0.0)
    assert not torch.isnan(adv).any() and torch.equal(adv[:3], torch.zeros(3)) and torch.equal(adv[6:], torch.zeros(3))
    torch.testing.assert_close(adv[3:6], torch.tensor([1.0, -2.0, 1.0]) / 3 / math.sqrt(1 / 3))
    assert informative_groups(r, 3).tolist() == [False, True, False]  # the last: one scored sample
