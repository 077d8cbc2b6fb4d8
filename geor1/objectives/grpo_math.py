"""The pure maths of GRPO: group-normalised advantages, the clipped surrogate, KL estimators, loss aggregation.

Shapes: B prompts, G samples per prompt (N = B*G rows, grouped: rows b*G .. b*G+G-1 belong to prompt b),
T completion tokens (right-padded, `mask` True on real tokens).
"""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("grpo", "dr_grpo", "dapo")
KL_ESTIMATORS = ("k1", "k3")
IMPORTANCE_LEVELS = ("token", "sequence")


def group_advantages(rewards: Tensor, group_size: int, eps: float = 1e-4, scale: bool = True) -> tuple[Tensor, Tensor]:
    """(r - mean_g) / (std_g + eps) within each group of G samples of the same prompt.

    rewards: [N] float, NaN where a reward could not be scored -> (advantages [N], scored mask [N] bool).
    Unscored samples get advantage 0 and do not enter their group's mean/std; a group with fewer than 2 scored
    samples, or whose scored rewards are all equal, gets advantage 0 everywhere (never NaN). `std` is the unbiased
    sample standard deviation (as in the paper's TRL-based trainer); `scale=False` gives Dr. GRPO's r - mean.
    """
    if group_size < 2:
        raise ValueError(f"GRPO needs at least 2 samples per prompt (G >= 2), got G={group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.double().view(-1, group_size)  # [B, G]
    scored = ~torch.isnan(r)
    n = scored.sum(1, keepdim=True)  # [B, 1]
    r0 = torch.where(scored, r, torch.zeros_like(r))
    mean = r0.sum(1, keepdim=True) / n.clamp(min=1)
    var = (torch.where(scored, r - mean, torch.zeros_like(r)) ** 2).sum(1, keepdim=True) / (n - 1).clamp(min=1)
    adv = r0 - mean
    if scale:
        adv = adv / (var.sqrt() + eps)
    # exactly 0 for a group whose scored rewards are all equal (r - mean can be a rounding error, e.g. 3 x 0.1)
    adv = torch.where(scored & informative_groups(rewards, group_size).unsqueeze(1), adv, torch.zeros_like(adv))
    return adv.view(-1).to(rewards.dtype), scored.view(-1)


def informative_groups(rewards: Tensor, group_size: int) -> Tensor:
    """Which groups carry a policy-gradient signal: at least 2 scored samples whose rewards are not all equal.

    rewards: [N] float, NaN where unscored -> [B] bool. The groups it rejects are those `group_advantages` gives
    zero advantage everywhere (DAPO's dynamic sampling drops them).

    >>> informative_groups(torch.tensor([1.0, 0.0, 0.5, 0.5, 2.0, float("nan")]), 2).tolist()
    [True, False, False]
    """
    r = rewards.double().view(-1, group_size)
    scored = ~torch.isnan(r)
    hi = torch.where(scored, r, torch.full_like(r, -torch.inf)).amax(1)
    lo = torch.where(scored, r, torch.full_like(r, torch.inf)).amin(1)
    return (scored.sum(1) >= 2) & (hi > lo)


def kl_estimate(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token KL(pi || ref) estimate from log-probs of the sampled tokens. [N, T] -> [N, T].

    k1 = logp - ref_logp (unbiased, high variance, can be negative);
    k3 = exp(ref - logp) - (ref - logp) - 1 (unbiased, non-negative; the paper's).
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        d = ref_logp - logp
        return torch.exp(d) - d - 1.0
    raise ValueError(f"KL estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, epsilon: float = 0.2, epsilon_high: float | None = None
) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective as a per-token loss.

    logp, old_logp: [N, T]; advantages: [N] -> (loss [N, T] = -min(ratio*A, clip(ratio, 1-eps, 1+eps_high)*A),
    clipped [N, T] bool where the clipped term was the smaller one).
    """
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logp - old_logp)
    a = advantages.unsqueeze(1)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + high) * a
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def sequence_clipped_surrogate(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[Tensor, Tensor]:
    """GSPO's clipped objective (sequence-level importance ratio) as a per-token loss, in its GSPO-token form.

    logp, old_logp: [N, T]; advantages: [N]; mask: [N, T] bool (True on real tokens) -> (loss [N, T],
    clipped [N, T] bool, the same for every token of a sequence).

    Each sequence's ratio is the geometric mean of its tokens' ratios, s_i = exp(mean over its real tokens of
    (logp - old_logp)) (1 for a sequence without real tokens). Token t of sequence i carries
    s_i,t = sg[s_i] * pi_t / sg[pi_t], whose value is s_i and whose gradient is s_i * grad log pi_t, and the loss
    -min(s_i,t * A_i, clip(s_i,t, 1-eps, 1+eps_high) * A_i): clipping is decided per sequence. With the "grpo"
    aggregation (mean over each sequence's tokens, then over sequences) its gradient is the GSPO paper's,
    s_i * A_i * mean_t grad log pi_t per sequence (as verl's `compute_policy_loss_gspo`). The GSPO paper clips
    much tighter than token-level PPO (eps about 3e-4 to 4e-4), since s_i averages the log-ratios.
    """
    high = epsilon if epsilon_high is None else epsilon_high
    m = mask.to(logp.dtype)
    log_ratio = (logp - old_logp) * m
    seq_log_ratio = log_ratio.sum(1) / m.sum(1).clamp(min=1)  # [N]
    ratio = torch.exp(logp - logp.detach() + seq_log_ratio.detach().unsqueeze(1))  # [N, T], value s_i
    a = advantages.unsqueeze(1)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + high) * a
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def aggregate(
    per_token: Tensor,
    mask: Tensor,
    mode: str = "grpo",
    max_len: int | None = None,
    num_rows: Tensor | float | None = None,
    num_tokens: Tensor | float | None = None,
) -> Tensor:
    """Reduce a per-token loss to the scalar loss, over real tokens only: the one aggregation of GRPO's loss
    (`GRPOModule._update` calls it for every micro-batch).

    per_token: [n, T] float; mask: [n, T] bool (True on real tokens) -> [] (a 0-dim tensor).

    grpo:    mean over each sequence's tokens, then mean over sequences (the paper's);
    dapo:    sum over all tokens / number of tokens (token-level);
    dr_grpo: sum over all tokens / (N * max_len) (a constant normaliser; max_len defaults to T).

    For the n rows of a micro-batch of a larger batch of N rows, pass the whole batch's denominators: `num_rows`
    (N; grpo, dr_grpo) and `num_tokens` (the batch's real tokens; dapo), scalars or 0-dim tensors. Each
    micro-batch's loss is then its share of the batch's, and the micro-batches' losses and gradients add up to the
    whole batch's exactly, in all three modes. Under data parallelism both are all ranks' counts / world size, since
    the ranks' gradients are averaged. None: this call's own rows / tokens (the whole batch at once).
    """
    m = mask.to(per_token.dtype)
    rows = per_token.shape[0] if num_rows is None else num_rows
    if mode == "grpo":
        return ((per_token * m).sum(1) / m.sum(1).clamp(min=1)).sum() / rows
    if mode == "dapo":
        tokens = m.sum().clamp(min=1) if num_tokens is None else num_tokens
        return (per_token * m).sum() / tokens
    if mode == "dr_grpo":
        return (per_token * m).sum() / (rows * (max_len or per_token.shape[1]))
    raise ValueError(f"loss aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def truncated_is_weights(old_logp: Tensor, sampler_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights (TIS) for tokens drawn by another sampler (e.g. vLLM's kernels).

    old_logp: [N, T] the policy's log-probs of the sampled tokens at rollout time; sampler_logp: [N, T] the
    sampler's own log-probs of the same tokens, NaN where the sampler reported none -> [N, T] per-token weights
    min(exp(old_logp - sampler_logp), cap), 1 where sampler_logp is NaN; no gradient. They multiply the per-token
    surrogate, so that its expectation is taken under the policy rather than the sampler (capped for variance).
    """
    if not cap > 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    with torch.no_grad():
        w = torch.exp(old_logp.float() - sampler_logp.float()).clamp(max=cap)
        return torch.where(torch.isnan(sampler_logp), torch.ones_like(w), w)
