"""Pure core of the reward model's loss: InstructGPT's K-way ranking loss over tensors.

No Django import. One batch element is one prompt with all its K ranked responses, so
each response goes through the model once and the C(K, 2) pairs are formed here from
the K scalar rewards (InstructGPT section 3.5). Prompts with different K are padded to
Kmax and carry a ``mask`` (True for a real response). Ranks follow
``training.datasets.formats``: 1 is best, equal ranks are a tie, and a tie gives no pair.

Losses are computed in float32 at least (bf16 rewards lose too much in ``r_i - r_j``;
float64 stays float64, for gradcheck); gradients flow back in the input's dtype.
Statistics are detached 0-d tensors, so that logging them costs a device sync only when
the caller asks with ``.item()``.
"""

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F

Reduction = Literal["mean", "sum", "none"]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as float32, or wider if it already is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_shapes(rewards: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor,
                  margins: torch.Tensor | None) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, Kmax], not of shape {tuple(rewards.shape)}")
    if ranks.shape != rewards.shape or mask.shape != rewards.shape:
        raise ValueError(f"rewards, ranks and mask must have one shape, not "
                         f"{tuple(rewards.shape)}, {tuple(ranks.shape)}, {tuple(mask.shape)}")
    if margins is not None:
        b, k = rewards.shape
        if margins.shape != (b, k, k):
            raise ValueError(f"margins must be [B, Kmax, Kmax] = {(b, k, k)}, "
                             f"not {tuple(margins.shape)}")


def pair_matrix(ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return a bool [B, Kmax, Kmax] whose [b, i, j] says response i strictly beats j.

    ``ranks`` is [B, Kmax] (1 is best), ``mask`` [B, Kmax] (True for a real response).
    Both i and j must be real; ties and the diagonal give False.
    """
    if ranks.dim() != 2 or mask.shape != ranks.shape:
        raise ValueError(f"ranks and mask must both be [B, Kmax], not "
                         f"{tuple(ranks.shape)} and {tuple(mask.shape)}")
    real = mask.bool()
    better = ranks.unsqueeze(2) < ranks.unsqueeze(1)
    return better & real.unsqueeze(2) & real.unsqueeze(1)


def kway_reward_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor,
    *,
    margins: torch.Tensor | None = None,
    reduction: Reduction = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return InstructGPT's K-way ranking loss and its statistics.

    For prompt b the loss is the mean over its pairs (i beats j) of
    ``-log sigmoid(r_i - r_j - margin_ij)``, with ``margins`` [B, Kmax, Kmax] subtracted as
    TRL's RewardTrainer does (None: no margin). ``"mean"`` averages over the prompts that
    have at least one pair, ``"sum"`` adds them, ``"none"`` returns [B] with 0 for a prompt
    without a pair. A batch without any pair gives a loss of 0 that still backpropagates
    (zero gradients), never NaN.

    Stats, pooled over all pairs of the batch: ``accuracy`` (share of pairs with
    r_i > r_j strictly, NaN without a pair), ``num_pairs``, ``num_correct`` (sum these
    over batches for an exact held-out accuracy) and ``reward_margin`` (mean r_i - r_j,
    margins not subtracted, NaN without a pair).
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be mean, sum or none, not {reduction!r}")
    _check_shapes(rewards, ranks, mask, margins)
    pairs = pair_matrix(ranks, mask)
    # Padded rewards (and margins off the pairs) are replaced by 0 before any arithmetic:
    # a NaN there would otherwise reach the gradient as 0 * NaN.
    r = torch.where(mask.bool(), _wide(rewards), 0.0)
    diff = r.unsqueeze(2) - r.unsqueeze(1)
    logits = diff if margins is None else diff - torch.where(pairs, _wide(margins), 0.0)
    weight = pairs.float()
    per_pair = -F.logsigmoid(logits) * weight

    pairs_per_prompt = weight.sum(dim=(1, 2))
    per_prompt = per_pair.sum(dim=(1, 2)) / pairs_per_prompt.clamp(min=1.0)
    if reduction == "none":
        loss = per_prompt
    elif reduction == "sum":
        loss = per_prompt.sum()
    else:
        has_pairs = (pairs_per_prompt > 0).float()
        loss = (per_prompt * has_pairs).sum() / has_pairs.sum().clamp(min=1.0)

    with torch.no_grad():
        num_pairs = pairs.sum()
        num_correct = ((diff > 0) & pairs).sum()
        total = num_pairs.float()
        stats = {
            "accuracy": num_correct.float() / total,  # 0 / 0 is NaN: no pair, no accuracy
            "num_pairs": num_pairs,
            "num_correct": num_correct,
            "reward_margin": (diff * weight).sum() / total,
        }
    return loss, stats


def naive_pairwise_loss(
    rewards: torch.Tensor,
    ranks: torch.Tensor,
    mask: torch.Tensor,
    *,
    margins: torch.Tensor | None = None,
) -> torch.Tensor:
    """Return the batch loss of ``kway_reward_loss`` by looping over pairs in Python.

    A reference for tests: slow, obviously correct, same conventions.
    """
    _check_shapes(rewards, ranks, mask, margins)
    prompt_losses = []
    for b in range(rewards.shape[0]):
        pair_losses = []
        for i in range(rewards.shape[1]):
            for j in range(rewards.shape[1]):
                if not (mask[b, i] and mask[b, j] and ranks[b, i] < ranks[b, j]):
                    continue
                logit = _wide(rewards[b, i]) - _wide(rewards[b, j])
                if margins is not None:
                    logit = logit - _wide(margins[b, i, j])
                pair_losses.append(-F.logsigmoid(logit))
        if pair_losses:
            prompt_losses.append(torch.stack(pair_losses).mean())
    if not prompt_losses:
        return _wide(rewards).sum() * 0.0
    return torch.stack(prompt_losses).mean()


def reward_bias(demonstration_rewards: torch.Tensor | Iterable[float]) -> float:
    """Return the mean reward of the demonstrations, the bias to subtract from the RM.

    InstructGPT normalises the trained reward model "using a bias so that the labeler
    demonstrations achieve a mean score of 0 before doing RL": score the held demonstration
    (prompt, response) pairs with the RM, pass their rewards here, and subtract the result
    from every reward PPO sees (``shift_rewards_to_zero_mean``). A constant shift leaves the
    ranking loss unchanged, but not PPO: the RM score is added once per response while
    the KL penalty is paid per token, so the level of the score sets how much a response
    gains from existing at all. Computed in float64; empty or non-finite input raises.
    """
    if isinstance(demonstration_rewards, torch.Tensor):
        values = demonstration_rewards.detach().to(torch.float64).flatten()
    else:
        values = torch.tensor([float(v) for v in demonstration_rewards], dtype=torch.float64)
    if values.numel() == 0:
        raise ValueError("reward_bias needs at least one demonstration reward")
    if not torch.isfinite(values).all():
        raise ValueError("demonstration rewards contain NaN or Inf")
    return values.mean().item()


def shift_rewards_to_zero_mean(rewards: torch.Tensor,
                               reference: torch.Tensor | Iterable[float]) -> torch.Tensor:
    """Return ``rewards`` minus ``reward_bias(reference)``, the demonstrations' rewards."""
    return rewards - reward_bias(reference)
