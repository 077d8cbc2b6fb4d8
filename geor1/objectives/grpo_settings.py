"""The settings of `GRPOModule`, in two typed groups validated in one place (each dataclass's `__post_init__`).

    RolloutSettings   how completions are sampled: G, length, temperature / top_p / top_k, prefix sharing, backend,
                      dynamic sampling
    LossSettings      how scored completions become a policy update: advantages, clipped surrogate, KL, aggregation,
                      updates per batch, micro-batches, gradient clipping

Both are plain dataclasses, so LightningCLI / jsonargparse reads them as nested YAML mappings::

    model:
      class_path: geor1.objectives.GRPOModule
      init_args:
        rollout: {group_size: 8, max_new_tokens: 2048, temperature: 1.0}
        loss: {beta: 0.04, kl_estimator: k3, epsilon: 0.2, aggregation: grpo}

The defaults are the Geo-R1 recipe (G=8, 2048 new tokens, temperature 1.0, beta=0.04 with k3, epsilon=0.2, mu=1).
A bad value raises `Geor1Error` naming its field (e.g. "rollout.group_size"), from Python and from a YAML alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from geor1 import Geor1Error
from geor1.objectives.grpo_math import AGGREGATIONS, IMPORTANCE_LEVELS, KL_ESTIMATORS

log = logging.getLogger(__name__)

BACKENDS = ("hf", "vllm")


def _fail(field: str, rule: str, value: Any) -> None:
    raise Geor1Error(f"GRPO setting {field} must be {rule}, got {value!r}")


@dataclass(frozen=True)
class RolloutSettings:
    """How the G completions of each prompt are sampled (`model.init_args.rollout` in a config).

    Args:
        group_size: G, samples per prompt (>= 2: a group of one has no advantage). Each batch of B prompts gives
            B*G completions, grouped by prompt.
        max_new_tokens: completion length limit (the paper: 2048); also the constant normaliser of the `dr_grpo`
            aggregation.
        temperature: sampling temperature, also applied to every log-prob of the loss (> 0).
        top_p: nucleus sampling (0 < top_p <= 1).
        top_k: sample among the k most likely tokens (>= 1; None: all). With top_p < 1 or top_k the ratio and the
            KL still use the untruncated temperature-scaled policy (as TRL and verl do): a warning says so.
        share_prefix: encode each prompt (and its images) once for its G samples, in the rollout and in every
            log-prob pass.
        backend: "hf" (the policy's own `generate`) or "vllm" (a colocated vLLM engine, weights synced every step;
            needs the vllm package and a GPU; see `geor1.model.vllm_rollout`).
        vllm_engine: extra `vllm.LLM` arguments, e.g. {"gpu_memory_utilization": 0.3}; used by the vllm backend
            only.
        vllm_is_cap: vllm backend only: truncated importance sampling (TIS) against the gap between vLLM's sampler
            and the policy: each token's surrogate is weighted by min(pi_old / pi_vllm, cap), pi_vllm being vLLM's
            log-prob of the sampled token (e.g. 2.0; > 0); None: off.
        dynamic_sampling: DAPO's dynamic sampling: groups whose scored rewards are all equal (zero advantage) are
            dropped, informative ones wait in a buffer across batches, and an optimizer step is made only once
            every rank holds as many informative groups as its batch has prompts (extra groups wait for the next
            step). Logged as `rollout/kept_groups`, `rollout/dropped_groups`, `rollout/buffered_groups`.
        max_dynamic_batches: with dynamic_sampling, after this many batches without a step (>= 1), step on the
            groups buffered so far (a rank with none trains on its latest batch), with a warning.
    """

    group_size: int = 8
    max_new_tokens: int = 2048
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    share_prefix: bool = True
    backend: str = "hf"
    vllm_engine: dict[str, Any] | None = None
    vllm_is_cap: float | None = None
    dynamic_sampling: bool = False
    max_dynamic_batches: int = 8

    def __post_init__(self) -> None:
        if self.group_size < 2:
            _fail("rollout.group_size", ">= 2 (a group of one has no advantage)", self.group_size)
        if self.max_new_tokens < 1:
            _fail("rollout.max_new_tokens", ">= 1", self.max_new_tokens)
        if not self.temperature > 0:
            _fail("rollout.temperature", "> 0", self.temperature)
        if not 0 < self.top_p <= 1:
            _fail("rollout.top_p", "in (0, 1]", self.top_p)
        if self.top_k is not None and self.top_k < 1:
            _fail("rollout.top_k", ">= 1 or null", self.top_k)
        if self.backend not in BACKENDS:
            _fail("rollout.backend", f"one of {BACKENDS}", self.backend)
        if self.vllm_is_cap is not None and (self.backend != "vllm" or not self.vllm_is_cap > 0):
            _fail(
                "rollout.vllm_is_cap",
                "null, or > 0 with backend 'vllm' (the hf backend has no other sampler)",
                self.vllm_is_cap,
            )
        if self.max_dynamic_batches < 1:
            _fail("rollout.max_dynamic_batches", ">= 1", self.max_dynamic_batches)
        if self.top_p < 1.0 or self.top_k is not None:
            log.warning(
                "top_p=%s, top_k=%s: rollouts sample from a truncated distribution while the ratio and the KL "
                "use the full temperature-scaled policy (slightly off-policy, as in TRL and verl)",
                self.top_p,
                self.top_k,
            )


@dataclass(frozen=True)
class LossSettings:
    """How scored completions become a policy update (`model.init_args.loss` in a config).

    Args:
        beta: weight of the KL(pi || ref) penalty (>= 0); 0 needs no reference model.
        kl_estimator: "k3" (the paper's; unbiased, non-negative) or "k1".
        epsilon: clip range below, ratio >= 1 - epsilon (and above, unless epsilon_high); 0 < epsilon < 1.
        epsilon_high: DAPO's clip-higher upper range, ratio <= 1 + epsilon_high (> 0; None: epsilon).
        aggregation: how per-token losses become one number: "grpo" (mean over each sequence's tokens, then mean
            over sequences; the paper's), "dr_grpo" (sum / (sequences * rollout.max_new_tokens)) or "dapo" (sum /
            tokens). Micro-batches and data-parallel ranks add up to the whole batch's loss in all three.
        scale_rewards: divide the group-centred rewards by the group's std (False: Dr. GRPO's r - mean).
        advantage_eps: the eps of (r - mean) / (std + eps) (>= 0).
        mu: policy updates (optimizer steps) per batch of rollouts (>= 1). With 1 the old policy is the current
            one (ratio 1, as in TRL); with more, the old log-probs are stored before the first update.
        micro_batch_prompts: prompts per backward pass, whole groups of G (>= 1; a memory knob: the gradient is the
            whole batch's); None: the whole batch at once.
        max_grad_norm: clip the gradient's global norm to this (> 0; over all ranks' shards under FSDP2); None: off.
        importance_level: "token" (PPO's per-token ratio; GRPO's) or "sequence" (GSPO: one ratio per completion,
            the geometric mean of its tokens' ratios, clipped per completion; see `sequence_clipped_surrogate`).
            With mu = 1 both give the same update (every ratio is 1); GSPO's paper uses a much smaller epsilon
            (about 3e-4 / 4e-4 for epsilon / epsilon_high).
    """

    beta: float = 0.04
    kl_estimator: str = "k3"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    aggregation: str = "grpo"
    scale_rewards: bool = True
    advantage_eps: float = 1e-4
    mu: int = 1
    micro_batch_prompts: int | None = None
    max_grad_norm: float | None = 1.0
    importance_level: str = "token"

    def __post_init__(self) -> None:
        if not self.beta >= 0:
            _fail("loss.beta", ">= 0", self.beta)
        if self.kl_estimator not in KL_ESTIMATORS:
            _fail("loss.kl_estimator", f"one of {KL_ESTIMATORS}", self.kl_estimator)
        if not 0 < self.epsilon < 1:
            _fail("loss.epsilon", "in (0, 1)", self.epsilon)
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            _fail("loss.epsilon_high", "> 0 or null", self.epsilon_high)
        if self.aggregation not in AGGREGATIONS:
            _fail("loss.aggregation", f"one of {AGGREGATIONS}", self.aggregation)
        if not self.advantage_eps >= 0:
            _fail("loss.advantage_eps", ">= 0", self.advantage_eps)
        if self.mu < 1:
            _fail("loss.mu", ">= 1", self.mu)
        if self.micro_batch_prompts is not None and self.micro_batch_prompts < 1:
            _fail("loss.micro_batch_prompts", ">= 1 or null", self.micro_batch_prompts)
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            _fail("loss.max_grad_norm", "> 0 or null", self.max_grad_norm)
        if self.importance_level not in IMPORTANCE_LEVELS:
            _fail("loss.importance_level", f"one of {IMPORTANCE_LEVELS}", self.importance_level)


DEFAULT_ROLLOUT = RolloutSettings()  # the Geo-R1 recipe's (frozen: safe as a shared default argument)
DEFAULT_LOSS = LossSettings()
