"""The K-way reward-model loss: hand-worked numbers, the naive reference, gradients, dtypes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.losses import (
    kway_reward_loss,
    naive_pairwise_loss,
    pair_matrix,
    reward_bias,
    shift_rewards_to_zero_mean,
)


def softplus(x: float) -> float:
    """Return log(1 + e^x), which is -log sigmoid(-x)."""
    return math.log1p(math.exp(x))


def t(rows, dtype=torch.float32):
    return torch.tensor(rows, dtype=dtype)


def full_mask(rewards):
    return torch.ones_like(rewards, dtype=torch.bool)


def test_pair_matrix_marks_strictly_better_real_responses():
    ranks = torch.tensor([[1, 2, 2, 3]])
    mask = torch.tensor([[True, True, True, False]])
    expected = torch.tensor([[
        # 0 beats both rank-2 responses; the rank-2 tie gives no pair; 3 is padding.
        [False, True, True, False],
        [False, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]])
    assert torch.equal(pair_matrix(ranks, mask), expected)


def test_it_gives_log_1_plus_e_minus_1_for_two_responses_one_apart():
    rewards = t([[1.0, 0.0]])
    loss, stats = kway_reward_loss(rewards, torch.tensor([[1, 2]]), full_mask(rewards))
    # -log sigmoid(1 - 0) = log(1 + e^-1) = 0.31326...
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0)), rel=1e-6)
    assert stats["num_pairs"].item() == 1
    assert stats["accuracy"].item() == 1.0


def test_it_averages_the_three_pairs_of_a_strict_ranking_of_three():
    rewards = t([[2.0, 1.0, 0.0]])
    loss, _ = kway_reward_loss(rewards, torch.tensor([[1, 2, 3]]), full_mask(rewards))
    # Pairs (0,1), (0,2), (1,2) with differences 1, 2, 1: C(3,2) = 3 terms.
    expected = (softplus(-1.0) + softplus(-2.0) + softplus(-1.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_a_tie_gives_no_pair():
    rewards = t([[0.0, 5.0, 1.0]])
    loss, stats = kway_reward_loss(rewards, torch.tensor([[1, 1, 2]]), full_mask(rewards))
    # Only (0,2): 0 - 1 = -1, and (1,2): 5 - 1 = 4. The tie (0,1) is no pair.
    expected = (softplus(1.0) + softplus(-4.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["num_pairs"].item() == 2
    assert stats["accuracy"].item() == 0.5


def test_it_averages_prompts_not_pairs():
    # Prompt 0: three pairs, each with difference 1 or 2; prompt 1: one pair, difference 0.
    rewards = t([[2.0, 1.0, 0.0], [0.0, 0.0, 123.0]])
    ranks = torch.tensor([[1, 2, 3], [1, 2, 1]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    loss, stats = kway_reward_loss(rewards, ranks, mask)
    prompt0 = (softplus(-1.0) + softplus(-2.0) + softplus(-1.0)) / 3
    prompt1 = math.log(2.0)  # -log sigmoid(0)
    assert loss.item() == pytest.approx((prompt0 + prompt1) / 2, rel=1e-6)
    assert stats["num_pairs"].item() == 4
    per_prompt, _ = kway_reward_loss(rewards, ranks, mask, reduction="none")
    assert per_prompt.tolist() == pytest.approx([prompt0, prompt1], rel=1e-6)
    summed, _ = kway_reward_loss(rewards, ranks, mask, reduction="sum")
    assert summed.item() == pytest.approx(prompt0 + prompt1, rel=1e-6)


def test_a_margin_is_subtracted_from_the_difference():
    rewards = t([[1.0, 0.0]])
    margins = torch.zeros(1, 2, 2)
    margins[0, 0, 1] = 1.0
    loss, stats = kway_reward_loss(rewards, torch.tensor([[1, 2]]), full_mask(rewards),
                                   margins=margins)
    # -log sigmoid(1 - 0 - 1) = log 2; the reward margin statistic ignores the margin.
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)
    assert stats["reward_margin"].item() == pytest.approx(1.0)


def test_padding_is_never_read_even_when_nan():
    rewards = t([[1.0, 0.0, float("nan")]], dtype=torch.float32).requires_grad_()
    mask = torch.tensor([[True, True, False]])
    margins = torch.full((1, 3, 3), float("nan"))
    margins[0, 0, 1] = 0.0
    loss, _ = kway_reward_loss(rewards, torch.tensor([[1, 2, 1]]), mask, margins=margins)
    loss.backward()
    assert loss.item() == pytest.approx(softplus(-1.0), rel=1e-6)
    assert torch.isfinite(rewards.grad).all()
    assert rewards.grad[0, 2].item() == 0.0


def test_accuracy_and_reward_margin_are_pooled_over_pairs():
    rewards = t([[3.0, 1.0, 2.0], [4.0, 4.0, 0.0]])
    ranks = torch.tensor([[1, 2, 3], [1, 2, 3]])
    loss, stats = kway_reward_loss(rewards, ranks, full_mask(rewards))
    # Prompt 0: (0,1) +2 right, (0,2) +1 right, (1,2) -1 wrong.
    # Prompt 1: (0,1) 0, an equal reward is not right; (0,2) +4 right, (1,2) +4 right.
    assert stats["num_pairs"].item() == 6
    assert stats["num_correct"].item() == 4
    assert stats["accuracy"].item() == pytest.approx(4 / 6)
    assert stats["reward_margin"].item() == pytest.approx((2 + 1 - 1 + 0 + 4 + 4) / 6)
    assert not any(s.requires_grad for s in stats.values())


def test_an_all_tied_batch_gives_zero_with_a_gradient_path():
    rewards = t([[0.3, -2.0, 1.0], [5.0, 5.0, 5.0]]).requires_grad_()
    ranks = torch.tensor([[1, 1, 1], [2, 2, 2]])
    loss, stats = kway_reward_loss(rewards, ranks, full_mask(rewards))
    assert loss.item() == 0.0
    assert loss.requires_grad
    loss.backward()
    assert torch.equal(rewards.grad, torch.zeros_like(rewards))
    assert stats["num_pairs"].item() == 0
    assert math.isnan(stats["accuracy"].item())  # no pair, no accuracy


def test_a_prompt_without_pairs_does_not_dilute_the_mean():
    rewards = t([[1.0, 0.0], [7.0, 7.0]])
    loss, _ = kway_reward_loss(rewards, torch.tensor([[1, 2], [1, 1]]), full_mask(rewards))
    assert loss.item() == pytest.approx(softplus(-1.0), rel=1e-6)


def test_the_gradient_is_the_hand_derived_one_and_matches_finite_differences():
    rewards = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    ranks, mask = torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool)
    loss, _ = kway_reward_loss(rewards, ranks, mask)
    loss.backward()
    # d/dr0 -log sigmoid(r0 - r1) = -(1 - sigmoid(1)) = -sigmoid(-1); d/dr1 is the opposite.
    s = 1 / (1 + math.exp(1.0))
    assert rewards.grad[0].tolist() == pytest.approx([-s, s], rel=1e-9)

    # Three prompts with ties, padding and margins, against central finite differences.
    rewards = torch.tensor([[0.5, -0.2, 1.3, 0.0], [0.1, 0.4, 0.0, 0.0], [2.0, 1.0, 1.5, -1.0]],
                           dtype=torch.float64, requires_grad=True)
    ranks = torch.tensor([[2, 1, 2, 3], [1, 2, 9, 9], [1, 3, 2, 4]])
    mask = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
    margins = torch.rand(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(
        lambda r: kway_reward_loss(r, ranks, mask, margins=margins)[0], (rewards,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_it_computes_in_float32_for_float32_and_bf16_input(dtype):
    rewards = torch.tensor([[1.0, 0.0, 0.5], [0.25, 2.0, -1.0]], dtype=dtype,
                           requires_grad=True)
    ranks = torch.tensor([[1, 3, 2], [2, 1, 3]])
    loss, _ = kway_reward_loss(rewards, ranks, full_mask(rewards))
    assert loss.dtype == torch.float32
    expected = naive_pairwise_loss(rewards.detach().double(), ranks, full_mask(rewards))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert rewards.grad.dtype == dtype
    assert torch.isfinite(rewards.grad).all()


def test_it_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        kway_reward_loss(torch.zeros(2, 3), torch.ones(2, 4), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="margins"):
        kway_reward_loss(torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3, dtype=torch.bool),
                         margins=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="reduction"):
        kway_reward_loss(torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool),
                         reduction="max")


@st.composite
def ranked_batches(draw):
    """Draw B prompts, each with 1..Kmax real responses (K in 2..9), ties and margins."""
    kmax = draw(st.integers(2, 9))
    batch = draw(st.integers(1, 4))
    floats = st.floats(-20, 20, allow_nan=False, width=32)
    rewards, ranks, mask = [], [], []
    for _ in range(batch):
        k = draw(st.integers(1, kmax))
        # Ranks from a small range make ties common; padding gets arbitrary ranks.
        ranks.append(draw(st.lists(st.integers(1, kmax), min_size=kmax, max_size=kmax)))
        rewards.append(draw(st.lists(floats, min_size=kmax, max_size=kmax)))
        mask.append([i < k for i in range(kmax)])
    margins = None
    if draw(st.booleans()):
        flat = draw(st.lists(st.floats(0, 5, width=32), min_size=batch * kmax * kmax,
                             max_size=batch * kmax * kmax))
        margins = torch.tensor(flat).view(batch, kmax, kmax)
    return torch.tensor(rewards), torch.tensor(ranks), torch.tensor(mask), margins


@settings(max_examples=150, deadline=None)
@given(ranked_batches())
def test_it_equals_the_mean_over_prompts_of_the_naive_pairwise_mean(batch):
    rewards, ranks, mask, margins = batch
    loss, stats = kway_reward_loss(rewards, ranks, mask, margins=margins)
    expected = naive_pairwise_loss(rewards, ranks, mask, margins=margins)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)

    pairs = [(b, i, j) for b in range(rewards.shape[0]) for i in range(rewards.shape[1])
             for j in range(rewards.shape[1])
             if mask[b, i] and mask[b, j] and ranks[b, i] < ranks[b, j]]
    assert stats["num_pairs"].item() == len(pairs)
    correct = sum(bool(rewards[b, i] > rewards[b, j]) for b, i, j in pairs)
    assert stats["num_correct"].item() == correct


def test_reward_bias_is_the_demonstrations_mean_and_the_shift_centres_them():
    demonstrations = torch.tensor([1.0, 2.0, 6.0])
    assert reward_bias(demonstrations) == pytest.approx(3.0)
    assert reward_bias([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    shifted = shift_rewards_to_zero_mean(demonstrations, demonstrations)
    assert shifted.tolist() == pytest.approx([-2.0, -1.0, 3.0])
    assert shift_rewards_to_zero_mean(torch.tensor([10.0]), demonstrations).item() == 7.0


def test_reward_bias_refuses_empty_or_non_finite_input():
    with pytest.raises(ValueError, match="at least one"):
        reward_bias([])
    with pytest.raises(ValueError, match="NaN or Inf"):
        reward_bias(torch.tensor([1.0, float("inf")]))
