"""PPO-ptx math: hand-worked numbers, masking, clipping, last-token scores, finiteness."""

import math

import pytest
import torch
import torch.nn.functional as F

from training.ppo_math import (
    check_finite,
    entropy_from_logits,
    gae,
    last_token_index,
    masked_mean,
    per_token_kl,
    policy_loss,
    ptx_loss,
    shaped_rewards,
    value_loss,
    whiten,
)

NAN, INF = float("nan"), float("inf")


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def m(rows):
    return torch.tensor(rows, dtype=torch.bool)


def approx(values, **kwargs):
    return pytest.approx(values, rel=1e-6, abs=1e-6, **kwargs)


# per_token_kl


def test_kl_is_zero_when_the_policy_equals_the_reference():
    logprobs = t([[-1.0, -2.5, -0.1]])
    assert torch.equal(per_token_kl(logprobs, logprobs.clone(), m([[1, 1, 1]])),
                       torch.zeros(1, 3))


def test_kl_is_log_pi_rl_minus_log_pi_sft_and_zero_on_padding():
    kl = per_token_kl(t([[-1.0, -0.5, -INF]]), t([[-2.0, -0.25, NAN]]), m([[1, 1, 0]]))
    # -1 - (-2) = 1; -0.5 - (-0.25) = -0.25 (one token's k1 can be negative); padding 0.
    assert kl[0].tolist() == approx([1.0, -0.25, 0.0])


# shaped_rewards


def test_the_score_goes_on_the_last_real_token_of_each_response():
    logprobs = t([[-1.0, -1.0, -1.0, -1.0],
                  [-1.0, -1.0, -9.0, -9.0],
                  [-1.0, -9.0, -9.0, -9.0]])
    ref = t([[-1.5, -0.5, -1.0, -2.0],
             [-1.0, -2.0, 0.0, 0.0],
             [-3.0, 0.0, 0.0, 0.0]])
    mask = m([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    rewards = shaped_rewards(t([10.0, 20.0, 30.0]), logprobs, ref, mask, beta=0.1)
    # kl rows: [0.5, -0.5, 0, 1], [0, 1, pad, pad], [2, pad, pad, pad]; reward = -0.1 * kl,
    # plus the score at positions 3, 1 and 0.
    assert rewards[0].tolist() == approx([-0.05, 0.05, 0.0, -0.1 + 10.0])
    assert rewards[1].tolist() == approx([0.0, -0.1 + 20.0, 0.0, 0.0])
    assert rewards[2].tolist() == approx([-0.2 + 30.0, 0.0, 0.0, 0.0])


def test_the_last_real_token_is_found_with_left_padding_and_holes():
    assert last_token_index(m([[0, 0, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1]])).tolist() == [3, 2, 3]
    rewards = shaped_rewards(t([5.0]), t([[-1.0, 0.0, -1.0, 0.0]]), t([[-1.0, 0.0, -1.0, 0.0]]),
                             m([[1, 0, 1, 0]]), beta=0.02)
    assert rewards[0].tolist() == approx([0.0, 0.0, 5.0, 0.0])


def test_a_response_without_tokens_cannot_carry_a_score():
    with pytest.raises(ValueError, match="at least one real token"):
        shaped_rewards(t([1.0, 2.0]), torch.zeros(2, 2), torch.zeros(2, 2), m([[1, 1], [0, 0]]),
                       beta=0.1)


# gae


def test_gae_with_gamma_1_lam_1_is_reward_to_go_minus_value():
    rewards, values = t([[1.0, 2.0, 3.0]]), t([[0.5, 1.0, 2.0]])
    advantages, returns = gae(rewards, values, m([[1, 1, 1]]), gamma=1.0, lam=1.0)
    # Rewards-to-go 6, 5, 3 minus values 0.5, 1, 2; returns are the rewards-to-go.
    assert advantages[0].tolist() == approx([5.5, 4.0, 1.0])
    assert returns[0].tolist() == approx([6.0, 5.0, 3.0])


def test_gae_with_lam_0_is_the_one_step_td_error():
    rewards, values = t([[1.0, 2.0, 3.0]]), t([[0.5, 1.0, 2.0]])
    advantages, returns = gae(rewards, values, m([[1, 1, 1]]), gamma=0.9, lam=0.0)
    # delta_t = r_t + 0.9 * V_{t+1} - V_t, with V after the last token = 0:
    # 1 + 0.9 - 0.5 = 1.4; 2 + 1.8 - 1 = 2.8; 3 + 0 - 2 = 1.0.
    assert advantages[0].tolist() == approx([1.4, 2.8, 1.0])
    assert returns[0].tolist() == approx([1.9, 3.8, 3.0])


def test_gae_three_tokens_worked_by_hand():
    rewards, values = t([[0.0, -0.5, 2.0]]), t([[1.0, 0.5, 1.5]])
    advantages, _ = gae(rewards, values, m([[1, 1, 1]]), gamma=0.9, lam=0.5)
    # gamma * lam = 0.45.
    # t=2: delta = 2 + 0 - 1.5 = 0.5;                A2 = 0.5
    # t=1: delta = -0.5 + 0.9 * 1.5 - 0.5 = 0.35;    A1 = 0.35 + 0.45 * 0.5 = 0.575
    # t=0: delta = 0 + 0.9 * 0.5 - 1 = -0.55;        A0 = -0.55 + 0.45 * 0.575 = -0.29125
    assert advantages[0].tolist() == approx([-0.29125, 0.575, 0.5])


def test_padding_changes_nothing_in_gae():
    rewards, values = t([[0.0, -0.5, 2.0]]), t([[1.0, 0.5, 1.5]])
    expected, expected_returns = gae(rewards, values, m([[1, 1, 1]]), gamma=0.9, lam=0.5)
    # The same three tokens with garbage padding after them and in between.
    for positions, width in (([0, 1, 2], 5), ([0, 2, 4], 5), ([1, 2, 4], 6)):
        padded_rewards = torch.full((1, width), NAN)
        padded_values = torch.full((1, width), 1e6)
        mask = torch.zeros(1, width, dtype=torch.bool)
        padded_rewards[0, positions] = rewards[0]
        padded_values[0, positions] = values[0]
        mask[0, positions] = True
        advantages, returns = gae(padded_rewards, padded_values, mask, gamma=0.9, lam=0.5)
        assert advantages[0, positions].tolist() == approx(expected[0].tolist())
        assert returns[0, positions].tolist() == approx(expected_returns[0].tolist())
        assert (advantages[~mask] == 0).all() and (returns[~mask] == 0).all()


def test_gae_handles_rows_of_different_lengths_independently():
    rewards = t([[1.0, 1.0, 1.0], [4.0, 0.0, 0.0]])
    values = t([[0.0, 0.0, 0.0], [1.0, 7.0, 7.0]])
    advantages, _ = gae(rewards, values, m([[1, 1, 1], [1, 0, 0]]), gamma=1.0, lam=1.0)
    # Row 1 ends at its first token: 4 - 1 = 3, no bootstrap from the padded 7s.
    assert advantages.tolist() == [approx([3.0, 2.0, 1.0]), approx([3.0, 0.0, 0.0])]


# whiten


def test_whiten_gives_mean_0_unbiased_variance_1_over_real_tokens():
    out = whiten(t([[1.0, 2.0, NAN], [3.0, 1e9, 1e9]]), m([[1, 1, 0], [1, 0, 0]]))
    # Real values 1, 2, 3: mean 2, unbiased variance ((1 + 0 + 1) / 2) = 1.
    assert out.tolist() == [approx([-1.0, 0.0, 0.0]), approx([1.0, 0.0, 0.0])]


def test_whiten_without_shifting_keeps_the_mean():
    out = whiten(t([[2.0, 4.0, 6.0, 0.0]]), m([[1, 1, 1, 0]]), shift_mean=False)
    # Mean 4, unbiased std 2: (x - 4) / 2 + 4.
    assert out[0].tolist() == approx([3.0, 4.0, 5.0, 0.0])


def test_whiten_refuses_an_empty_mask():
    with pytest.raises(ValueError, match="no real token"):
        whiten(torch.ones(2, 2), m([[0, 0], [0, 0]]))


# policy_loss


def test_the_clipped_surrogate_worked_by_hand():
    old = t([[-1.0, -1.0, -1.0, -1.0]])
    logprobs = (old + torch.log(t([[1.5, 1.5, 0.5, 0.5]]))).requires_grad_()
    advantages = t([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = policy_loss(logprobs, old, advantages, m([[1, 1, 1, 1]]), clip=0.2)
    # Token: ratio, A -> max(-A r, -A clip(r, 0.8, 1.2))
    #   0: 1.5, +1 -> max(-1.5, -1.2) = -1.2   clipped (no more push up)
    #   1: 1.5, -1 -> max( 1.5,  1.2) =  1.5   not clipped (still pulled down)
    #   2: 0.5, +1 -> max(-0.5, -0.8) = -0.5   not clipped (still pushed up)
    #   3: 0.5, -1 -> max( 0.5,  0.8) =  0.8   clipped
    # mean = (-1.2 + 1.5 - 0.5 + 0.8) / 4 = 0.15
    assert loss.item() == pytest.approx(0.15, rel=1e-6)
    assert stats["clip_fraction"].item() == 0.5
    expected_kl = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4
    assert stats["approx_kl"].item() == pytest.approx(expected_kl, rel=1e-6)
    loss.backward()
    # d(-A r)/d logprob = -A r, over 4 tokens; clipped tokens give no gradient.
    assert logprobs.grad[0].tolist() == approx([0.0, 1.5 / 4, -0.5 / 4, 0.0])


def test_at_ratio_one_the_loss_is_minus_the_mean_advantage():
    logprobs = t([[-0.3, -2.0, -1.1]])
    loss, stats = policy_loss(logprobs, logprobs.clone(), t([[1.0, 2.0, -6.0]]),
                              m([[1, 1, 1]]))
    assert loss.item() == pytest.approx(1.0)
    assert stats["clip_fraction"].item() == 0.0
    assert stats["approx_kl"].item() == 0.0


def test_padding_changes_nothing_in_the_policy_loss_or_its_gradient():
    old = t([[-1.0, -1.0, -1.0]])
    logprobs = (old + torch.log(t([[1.5, 0.5, 1.1]]))).requires_grad_()
    advantages = t([[1.0, -1.0, 0.5]])
    loss, stats = policy_loss(logprobs, old, advantages, m([[1, 1, 1]]))
    loss.backward()

    padded = torch.cat([logprobs.detach(), t([[-INF, NAN]])], dim=1).requires_grad_()
    padded_loss, padded_stats = policy_loss(
        padded, torch.cat([old, t([[-INF, 0.0]])], dim=1),
        torch.cat([advantages, t([[NAN, 1e9]])], dim=1), m([[1, 1, 1, 0, 0]]))
    padded_loss.backward()
    assert padded_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    assert padded_stats["clip_fraction"].item() == stats["clip_fraction"].item()
    assert padded.grad[0, :3].tolist() == approx(logprobs.grad[0].tolist())
    assert padded.grad[0, 3:].tolist() == [0.0, 0.0]


def test_the_policy_loss_computes_in_float32_for_bf16_input():
    logprobs = t([[-1.0, -2.0]], dtype=torch.bfloat16)
    loss, _ = policy_loss(logprobs, logprobs - 0.1, t([[1.0, 1.0]], dtype=torch.bfloat16),
                          m([[1, 1]]))
    assert loss.dtype == torch.float32


# value_loss


def test_the_clipped_value_loss_worked_by_hand():
    values = t([[0.5, 0.1, 0.5]]).requires_grad_()
    old, returns = t([[0.0, 0.0, 0.0]]), t([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old, returns, m([[1, 1, 1]]), clip=0.2)
    # Token: v, v_clipped, R -> max((v - R)^2, (v_c - R)^2)
    #   0: 0.5, 0.2, 1 -> max(0.25, 0.64) = 0.64   clipped
    #   1: 0.1, 0.1, 1 -> max(0.81, 0.81) = 0.81   within the clip range
    #   2: 0.5, 0.2, 0 -> max(0.25, 0.04) = 0.25
    # loss = 0.5 * (0.64 + 0.81 + 0.25) / 3 = 0.283333...
    assert loss.item() == pytest.approx(0.5 * 1.7 / 3, rel=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(1 / 3)
    loss.backward()
    # d/dv 0.5 (v - R)^2 / 3 = (v - R) / 3 where unclipped; 0 where the clipped term wins.
    assert values.grad[0].tolist() == approx([0.0, -0.9 / 3, 0.5 / 3])


def test_padding_changes_nothing_in_the_value_loss():
    loss, _ = value_loss(t([[0.5, 0.1]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]), m([[1, 1]]))
    padded, _ = value_loss(t([[0.5, 0.1, NAN]]), t([[0.0, 0.0, INF]]), t([[1.0, 1.0, 5.0]]),
                           m([[1, 1, 0]]))
    assert padded.item() == pytest.approx(loss.item(), rel=1e-6)


# ptx_loss


def test_the_ptx_loss_equals_torch_cross_entropy_on_shifted_tokens():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=generator)
    labels = torch.randint(0, 7, (2, 5), generator=generator)
    mask = m([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # Reference: transformers' causal-LM loss, padding labels set to -100.
    targets = labels[:, 1:].masked_fill(~mask[:, 1:], -100)
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 7), targets.reshape(-1),
                               ignore_index=-100)
    assert ptx_loss(logits, labels, mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_ptx_loss_of_uniform_logits_is_log_vocab():
    labels = torch.tensor([[3, 1, 2, 99]])  # 99 is out of range but masked out
    loss = ptx_loss(torch.zeros(1, 4, 4), labels, m([[1, 1, 1, 0]]))
    assert loss.item() == pytest.approx(math.log(4.0), rel=1e-6)


# entropy_from_logits


def test_entropy_is_log_vocab_for_uniform_and_zero_for_certain_distributions():
    logits = torch.zeros(1, 3, 8)
    logits[0, 1] = torch.tensor([100.0] + [0.0] * 7)  # all mass on one token
    logits[0, 2] = NAN  # padding
    entropy = entropy_from_logits(logits, m([[1, 1, 0]]))
    assert entropy.item() == pytest.approx(math.log(8.0) / 2, rel=1e-5)


# masked_mean and check_finite


def test_masked_mean_counts_real_tokens_of_the_whole_batch():
    assert masked_mean(t([[1.0, 2.0, NAN], [3.0, INF, INF]]), m([[1, 1, 0], [1, 0, 0]])) == 2.0


def test_check_finite_passes_finite_tensors():
    check_finite("loss", torch.tensor(1.5), step=3)


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_check_finite_stops_a_run_on_nan_or_inf(bad):
    with pytest.raises(FloatingPointError, match=r"policy_loss is NaN/Inf at step 7 \(1 of 3"):
        check_finite("policy_loss", torch.tensor([0.0, bad, 1.0]), step=7)
    with pytest.raises(FloatingPointError, match="kl is NaN/Inf"):
        check_finite("kl", torch.tensor(bad))
