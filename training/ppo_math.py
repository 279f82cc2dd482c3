"""Pure core of PPO-ptx: KL-shaped rewards, GAE, clipped losses, the pretraining term.

No Django import. The objective is InstructGPT's (Ouyang et al. 2022, eq. 2)::

    E[r(x, y) - beta * log(pi_RL(y|x) / pi_SFT(y|x))] + gamma * E_pretrain[log pi_RL(x)]

with the PPO details of Ziegler et al. (2019) as TRL's PPOTrainer implements them.

Conventions, shared by every function here:

- Per-token tensors are [B, T] over the *response* tokens of a rollout:
  ``logprobs[b, t] = log pi(y_t | x, y_<t)``, ``values[b, t]`` is the value head's
  estimate at the state before y_t. ``mask`` [B, T] is True (or 1) on real response
  tokens; padding may sit anywhere (right padding is usual) and its contents are never
  read, so -inf or NaN there is harmless, in the forward pass and in the gradient.
- KL is k1, ``log pi_RL - log pi_SFT`` per token: its expectation under pi_RL is the KL
  divergence, a single token's can be negative.
- The reward model's score is paid once, at the last real token of each response; every
  real token pays ``-beta * kl_t``.
- Means are token-level over the whole batch (sum over real tokens / number of real
  tokens), as in TRL. A mask with no real token gives NaN, which ``check_finite`` stops.
- Arithmetic is float32 at least (bf16 log-probs are too coarse for exp(lp - old_lp));
  float64 stays float64.
- Rollout quantities (shaped rewards, advantages, returns, old log-probs, old values)
  are constants of the loss: compute them under ``torch.no_grad()``.
- Statistics are detached 0-d tensors; ``.item()`` them when logging.
"""

import torch
import torch.nn.functional as F


def _wide(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as float32, or wider if it already is."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _real(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return ``x`` widened, with padding set to 0 before any arithmetic touches it."""
    # torch.where drops a NaN in padding from the forward pass, and its gradient there is
    # 0; doing it first (not on the result) keeps exp/log of that NaN out of backward.
    return torch.where(mask.bool(), _wide(x), 0.0)


def _check_same_shape(mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, T], not of shape {tuple(mask.shape)}")
    for name, tensor in tensors.items():
        if tensor.shape != mask.shape:
            raise ValueError(f"{name} must have the mask's shape {tuple(mask.shape)}, "
                             f"not {tuple(tensor.shape)}")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``x`` over the real tokens of the whole batch."""
    m = mask.bool()
    return _real(x, m).sum() / m.sum()


def per_token_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
    """Return the per-token KL estimate log pi_RL - log pi_SFT, [B, T], 0 on padding."""
    _check_same_shape(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    return _real(logprobs, mask) - _real(ref_logprobs, mask)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Return [B], the position of the last real token of each row; raise on an empty row."""
    m = mask.bool()
    if not m.any(dim=1).all():
        raise ValueError("every response needs at least one real token to carry its score")
    positions = torch.arange(m.shape[1], device=m.device).expand_as(m)
    return torch.where(m, positions, -1).amax(dim=1)


def shaped_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float,
) -> torch.Tensor:
    """Return the per-token rewards [B, T]: -beta * kl_t, plus the score at the last token.

    ``scores`` [B] are the reward model's (already shifted by ``reward_bias``). Padding
    gets 0. Call under ``torch.no_grad()``.
    """
    _check_same_shape(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores must be [B] = [{mask.shape[0]}], not {tuple(scores.shape)}")
    rewards = -beta * per_token_kl(logprobs, ref_logprobs, mask)
    last = last_token_index(mask)
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last] += _wide(scores)
    return rewards


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (advantages, returns), [B, T] each, by generalized advantage estimation.

    Backwards over the real tokens: delta_t = r_t + gamma * V_next - V_t and
    A_t = delta_t + gamma * lam * A_next, where "next" is the next *real* token and both
    are 0 after the last one (the response is over: no bootstrap). Padding is skipped and
    gets 0; returns = advantages + values. Call under ``torch.no_grad()``.
    """
    _check_same_shape(mask, rewards=rewards, values=values)
    m = mask.bool()
    r, v = _real(rewards, m), _real(values, m)
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_advantage = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        advantage = delta + gamma * lam * next_advantage
        real = m[:, t]
        advantages[:, t] = torch.where(real, advantage, 0.0)
        # A padding position passes the next real token's value and advantage through.
        next_value = torch.where(real, v[:, t], next_value)
        next_advantage = torch.where(real, advantage, next_advantage)
    returns = torch.where(m, advantages + v, 0.0)
    return advantages, returns


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Return ``x`` scaled to unit variance over the real tokens of the batch, 0 on padding.

    With ``shift_mean`` the result also has mean 0 (advantages); without, the mean is kept
    (rewards). The variance is the unbiased one, as in TRL; one real token gives 0.
    """
    _check_same_shape(mask, x=x)
    m = mask.bool()
    n = m.sum()
    if n.item() == 0:
        raise ValueError("cannot whiten: the mask has no real token")
    x = _real(x, m)
    mean = x.sum() / n
    centered = torch.where(m, x - mean, 0.0)
    var = centered.square().sum() / (n - 1).clamp(min=1)
    out = centered * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, 0.0)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return PPO's clipped surrogate loss, the masked mean of max(-A r, -A clip(r)).

    r = exp(logprobs - old_logprobs). Stats: ``clip_fraction``, the share of real tokens
    where the clipped term is the larger (so the token gives no gradient: r beyond
    1 + clip with A > 0, or below 1 - clip with A < 0), and ``approx_kl``,
    0.5 * mean((logprobs - old_logprobs)^2) (TRL's), the step's KL from the rollout policy.
    """
    _check_same_shape(mask, logprobs=logprobs, old_logprobs=old_logprobs,
                      advantages=advantages)
    m = mask.bool()
    log_ratio = _real(logprobs, m) - _real(old_logprobs, m)
    ratio = torch.exp(log_ratio)
    a = _real(advantages, m)
    unclipped = -a * ratio
    clipped = -a * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = {
            "clip_fraction": masked_mean((clipped > unclipped).float(), m),
            "approx_kl": 0.5 * masked_mean(log_ratio.square(), m),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return the clipped value loss, the masked mean of 0.5 * max((v - R)^2, (v_c - R)^2).

    v_c = old_values + clamp(values - old_values, -clip, clip): the value head may not move
    more than ``clip`` from its rollout estimate. Stats: ``clip_fraction``, the share of
    real tokens where the clipped error is the larger.
    """
    _check_same_shape(mask, values=values, old_values=old_values, returns=returns)
    m = mask.bool()
    v, old, ret = _real(values, m), _real(old_values, m), _real(returns, m)
    v_clipped = old + torch.clamp(v - old, -clip, clip)
    unclipped = (v - ret).square()
    clipped = (v_clipped - ret).square()
    loss = 0.5 * masked_mean(torch.maximum(unclipped, clipped), m)
    with torch.no_grad():
        stats = {"clip_fraction": masked_mean((clipped > unclipped).float(), m)}
    return loss, stats


def ptx_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean next-token cross entropy on pretraining/SFT tokens (PPO-ptx's term).

    Transformers' convention: ``labels`` [B, T] are the input ids, ``logits`` [B, T, V] the
    model's output on them, and the shift happens here (logits at t predict labels at
    t + 1). ``mask`` [B, T] marks the label tokens to predict (position 0 never is). The
    objective's gamma * E[log pi(x)] is maximised by adding ``gamma * ptx_loss`` to the
    loss.
    """
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be [B, T, V] over labels [B, T], not "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    _check_same_shape(mask, labels=labels)
    target_mask = mask[:, 1:].bool()
    targets = torch.where(target_mask, labels[:, 1:], 0)
    shifted = _wide(logits[:, :-1])
    nll = F.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), targets.reshape(-1),
                          reduction="none").view_as(targets)
    return masked_mean(nll, target_mask)


def entropy_from_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return the mean entropy (nats) of the next-token distributions at the real tokens.

    ``logits`` [B, T, V], ``mask`` [B, T].
    """
    if logits.dim() != 3 or logits.shape[:2] != mask.shape:
        raise ValueError(f"logits must be [B, T, V] over a [B, T] mask, not "
                         f"{tuple(logits.shape)} and {tuple(mask.shape)}")
    logp = F.log_softmax(_wide(logits), dim=-1)
    entropy = -(logp.exp() * logp).sum(dim=-1)
    return masked_mean(entropy, mask)


def check_finite(name: str, tensor: torch.Tensor, *, step: int | None = None) -> None:
    """Raise FloatingPointError if ``tensor`` holds a NaN or an Inf: a run must stop there.

    Costs one device sync; call it on losses and on the statistics that feed them.
    """
    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return
    where = f" at step {step}" if step is not None else ""
    bad = int((~finite).sum())
    raise FloatingPointError(
        f"{name} is NaN/Inf{where} ({bad} of {tensor.numel()} values are not finite)")
