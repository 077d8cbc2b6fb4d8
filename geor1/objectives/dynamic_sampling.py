"""DAPO's dynamic sampling for `GRPOModule` (`rollout.dynamic_sampling`): groups whose scored rewards are all equal
carry no advantage (no policy-gradient signal), so they are dropped; informative groups wait in a buffer across
`training_step` calls (each call a new batch of prompts) until there are as many as a batch has prompts.

The buffer holds each group's prompt (`ChatSample`) and its G scored completions; a step re-encodes the prompts of
the groups it trains on (`merge_groups`), so groups from different batches train together exactly as if they had
been sampled in one batch. Groups a step leaves over were sampled by the policy before that step: they carry that
policy's log-probs (`ScoredGroup.old_logprobs`, set before the step), so that the next step's importance ratio is
taken against the policy that sampled them, not the current one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from geor1.data.sample import ChatSample
from geor1.model.policy import Policy, Rollout


@dataclass
class ScoredGroup:
    """One prompt and its G scored completions, rows of a `Rollout` ([G, T] tensors on the policy's device)."""

    sample: ChatSample
    completion_ids: Tensor  # [G, T] long
    completion_mask: Tensor  # [G, T] bool
    texts: list[str]  # G
    truncated: Tensor  # [G] bool
    sample_logprobs: Tensor | None  # [G, T] the sampler's log-probs (vLLM with TIS), else None
    scores: dict[str, list[float | None]]  # reward name -> G scores
    totals: list[float | None]  # G weighted totals (None: unscored)
    old_logprobs: Tensor | None = field(default=None)  # [G, T] under the policy that sampled it (set when left over)


def split_groups(
    samples: list[ChatSample],
    rollout: Rollout,
    scores: dict[str, list[float | None]],
    totals: list[float | None],
) -> list[ScoredGroup]:
    """A scored rollout of B prompts -> its B groups, in order."""
    g = rollout.group_size
    out = []
    for b, sample in enumerate(samples):
        rows = slice(b * g, (b + 1) * g)
        out.append(
            ScoredGroup(
                sample=sample,
                completion_ids=rollout.completion_ids[rows],
                completion_mask=rollout.completion_mask[rows],
                texts=rollout.texts[rows],
                truncated=rollout.truncated[rows] if rollout.truncated.numel() else rollout.truncated,
                sample_logprobs=None if rollout.sample_logprobs is None else rollout.sample_logprobs[rows],
                scores={name: values[rows] for name, values in scores.items()},
                totals=totals[rows],
            )
        )
    return out


def merge_groups(
    policy: Policy, groups: list[ScoredGroup], group_size: int
) -> tuple[Rollout, dict[str, list[float | None]], list[float | None], Tensor | None]:
    """Groups (from any batches) -> (one `Rollout` of them, prompts re-encoded together and completions right-padded
    to the longest, their scores, their totals, and [N, T] old log-probs with NaN on the rows of groups that have
    none (None when no group has any))."""
    if not groups:
        raise ValueError("merge_groups needs at least one group")
    width = max(grp.completion_ids.shape[1] for grp in groups)

    def pad(t: Tensor, value: float | int | bool) -> Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    ids = torch.cat([pad(grp.completion_ids, policy.pad_id) for grp in groups])
    mask = torch.cat([pad(grp.completion_mask, False) for grp in groups])
    truncated = torch.cat([grp.truncated for grp in groups])
    sample_lp = None
    if all(grp.sample_logprobs is not None for grp in groups):
        sample_lp = torch.cat([pad(grp.sample_logprobs, 0.0) for grp in groups])  # type: ignore[arg-type]
    old = None
    if any(grp.old_logprobs is not None for grp in groups):
        nan = float("nan")
        old = torch.cat(
            [
                pad(grp.old_logprobs, 0.0)
                if grp.old_logprobs is not None
                else torch.full((group_size, width), nan, device=ids.device)
                for grp in groups
            ]
        )
    inputs = policy.encode([grp.sample.prompt for grp in groups])
    texts = [t for grp in groups for t in grp.texts]
    rollout = Rollout(inputs, ids, mask, texts, group_size, truncated, sample_lp)
    scores = {name: [v for grp in groups for v in grp.scores[name]] for name in groups[0].scores}
    totals = [v for grp in groups for v in grp.totals]
    return rollout, scores, totals, old
