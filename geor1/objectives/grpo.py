"""`GRPOModule`: elevating — GRPO on pairing episodes (or coordinate answers) with verifiable rewards.

Per batch of B prompts: rollout (G samples each, the prompt prefilled once) -> score (registered rewards, weights
honoured) -> group-normalised advantages -> `mu` policy updates of the clipped surrogate + beta * KL(pi || ref) ->
log. The maths are the plain functions of `grpo_math`.

Departures from the paper's public trainer, on purpose: rewards are weighted as configured (its weights were
ignored); temperature and top_p are settings (it hard-wired them); the length reward is conditioned on correctness;
each prompt and its images are encoded once per rollout and once per log-prob pass, not once per sample;
a sample no reward can score gets zero advantage (never NaN); G < 2 is an error. With mu = 1 the old policy is the
current one (ratio 1, as in TRL); with mu > 1 the old log-probs are stored before the first update.

Options other trainers offer: GSPO's sequence-level importance ratio (`loss.importance_level: sequence`), DAPO's
dynamic sampling (`rollout.dynamic_sampling`: groups with equal rewards dropped, informative ones buffered across
batches until a step has B of them; see `geor1.objectives.dynamic_sampling`), and the policy's entropy logged every
step (`train/entropy`, from the LM-head tiles of the update's forward pass).

The settings come in two typed groups, `rollout` (`RolloutSettings`) and `loss` (`LossSettings`), documented and
validated in `geor1.objectives.grpo_settings`.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any, cast

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ParallelStrategy
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from geor1.data.sample import ChatSample
from geor1.model.policy import Policy, Rollout
from geor1.model.vllm_rollout import VLLMRollout, require_vllm
from geor1.objectives.base import PolicyModule, skip_everywhere
from geor1.objectives.dynamic_sampling import ScoredGroup, merge_groups, split_groups
from geor1.objectives.grpo_math import (
    aggregate,
    clipped_surrogate,
    group_advantages,
    informative_groups,
    kl_estimate,
    sequence_clipped_surrogate,
    truncated_is_weights,
)
from geor1.objectives.grpo_settings import DEFAULT_LOSS, DEFAULT_ROLLOUT, LossSettings, RolloutSettings
from geor1.objectives.memory import log_peak_memory
from geor1.objectives.rollout_rng import RolloutRNG
from geor1.objectives.scalars import first_lr, total_grad_norm
from geor1.objectives.sharding import ShardingSpec, is_sharded, reshard, shard_policy
from geor1.rewards import combine, get_reward
from geor1.rewards.registry import call_reward
from geor1.tasks import TASK_NAMES, GeoTarget, PairingTarget, Target, is_well_formed, task_of

log = logging.getLogger(__name__)


class GRPOModule(PolicyModule):
    """GRPO with the Geo-R1 recipe as defaults (G=8, beta=0.04 with k3, epsilon=0.2, mu=1, temperature 1.0).

    Args:
        policy: the model to train (a local folder, e.g. the SFT export, or a TinyPolicy).
        optimizer: optimizer factory (the paper: AdamW, lr 1e-6).
        scheduler: optional LR scheduler factory, stepped every optimizer step.
        rewards: reward name (registered, or a dotted import path) -> weight.
        reward_kwargs: extra keyword arguments per reward, e.g. {"length": {"max_len": 1024}}.
        rollout: how completions are sampled (`RolloutSettings`: group_size G, max_new_tokens, temperature, top_p,
            top_k, share_prefix, backend, vllm_engine, vllm_is_cap, dynamic_sampling, max_dynamic_batches).
        loss: how scored completions become an update (`LossSettings`: beta, kl_estimator, epsilon, epsilon_high,
            aggregation, scale_rewards, advantage_eps, mu, micro_batch_prompts, max_grad_norm, importance_level).
        disable_dropout: set every dropout of the policy (LoRA dropout included) to p=0, so that the old and the
            new log-probs of the same weights agree (TRL's `disable_dropout`).
        sharding: FSDP2 settings under `ModelParallelStrategy` (the reference model is sharded like the policy,
            optionally offloaded to CPU); ignored by single-device and DDP runs.
        log_completions_every_n_steps: TensorBoard text table of completions and an episode's images.
        export_dir: write the trained policy as a Hugging Face folder there when fit ends (unset under `geor1 fit`:
            `<trainer.default_root_dir>/model`).
    """

    def __init__(
        self,
        policy: Policy,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        rewards: dict[str, float] | None = None,
        reward_kwargs: dict[str, dict[str, Any]] | None = None,
        rollout: RolloutSettings = DEFAULT_ROLLOUT,
        loss: LossSettings = DEFAULT_LOSS,
        log_completions_every_n_steps: int = 50,
        export_dir: str | None = None,
        disable_dropout: bool = True,
        sharding: ShardingSpec | None = None,
    ) -> None:
        super().__init__(policy, optimizer, scheduler, export_dir, sharding)
        for name, value, cls in (("rollout", rollout, RolloutSettings), ("loss", loss, LossSettings)):
            if not isinstance(value, cls):  # a YAML mapping becomes one through jsonargparse; Python passes one
                raise TypeError(
                    f"GRPOModule({name}=...) takes a {cls.__name__}, e.g. {cls.__name__}(...), "
                    f"got {type(value).__name__}"
                )
        self.rollout_settings = rollout  # frozen dataclasses, validated in their __post_init__
        self.loss_settings = loss
        self.save_hyperparameters(ignore=["policy", "optimizer", "scheduler", "sharding", "rollout", "loss"])
        # the groups as plain dicts: readable hparams.yaml, and checkpoints that load with weights_only=True
        self.save_hyperparameters({"rollout": asdict(self.rollout_settings), "loss": asdict(self.loss_settings)})
        self.log_completions_every_n_steps = log_completions_every_n_steps
        if self.rollout_settings.backend == "vllm":
            require_vllm()  # fail at construction, before any data or model work
        if disable_dropout:
            n = disable_dropout_in(self.policy)
            log.debug("dropout off in %d policy modules", n)
        self.reward_weights = dict(rewards or {"accuracy": 1.0, "format": 1.0, "length": 1.0, "repetition": 1.0})
        self.reward_fns = {name: get_reward(name) for name in self.reward_weights}
        self.reward_kwargs = {name: dict((reward_kwargs or {}).get(name, {})) for name in self.reward_weights}
        self.automatic_optimization = False
        self._reference: Policy | None = None  # full fine-tuning with beta > 0: a frozen copy (not a submodule)
        self._engine: VLLMRollout | None = None  # rollout.backend "vllm"
        self._engine_step = -1  # the global step whose weights the engine holds
        self._val_counts = ValidationCounts()  # a validation epoch's sums (reset at its start)
        self._rollout_rng = RolloutRNG()  # this rank's sampling generator, saved per rank in checkpoints
        self._buffer: list[ScoredGroup] = []  # rollout.dynamic_sampling: informative groups not trained on yet
        self._batches_since_step = 0  # rollout.dynamic_sampling: batches since the last optimizer step

    # ------------------------------------------------------------------ reference model
    def setup(self, stage: str) -> None:
        # Lightning calls setup before it restores a checkpoint: the reference is the policy as constructed (the
        # initial model), also when a run resumes from a checkpoint of a trained policy.
        super().setup(stage)
        if stage == "fit" and self.loss_settings.beta > 0 and self.policy.lora is None and self._reference is None:
            ref = copy.deepcopy(self.policy).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            object.__setattr__(self, "_reference", ref)  # kept out of state_dict and checkpoints

    def shard(self, mesh) -> None:
        """FSDP2: the policy, and the frozen reference sharded the same way (optionally its shards on CPU): never a
        full copy per rank."""
        super().shard(mesh)
        if self._reference is not None and not is_sharded(self._reference.model):
            shard_policy(self._reference, mesh, self.sharding, offload=self.sharding.offload_reference)

    def on_fit_start(self) -> None:
        if self._reference is not None and not is_sharded(self._reference.model):
            self._reference.to(self.device)
        settings = self.rollout_settings
        if settings.backend == "vllm" and self._engine is None:
            self._engine = VLLMRollout(
                self.policy,
                engine_kwargs=settings.vllm_engine,
                seed=torch.initial_seed() % 2**31 + self.global_rank,
                sampling_logprobs=settings.vllm_is_cap is not None,
            )

    @contextmanager
    def _reference_policy(self):
        """The reference for the KL term: the adapter-disabled base under LoRA, else the frozen copy."""
        if self.policy.lora is not None:
            with self.policy.model.disable_adapter():
                yield self.policy
        else:
            yield self._reference

    # ------------------------------------------------------------------ exact resume of sampling
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every rank's sampling generator and global RNGs, gathered (a collective: all ranks save together)
        checkpoint["rollout_rng"] = self._rollout_rng.state_dict(self.device)
        if self.rollout_settings.dynamic_sampling:
            # the buffered groups (prompts with images, scored completions) are not saved: their number over all
            # ranks and this rank's keys are, and a resume says they are dropped (see on_load_checkpoint)
            total = float(len(self._buffer))
            if self._trainer is not None and self.trainer.world_size > 1:
                total = float(self.trainer.strategy.reduce(torch.tensor(total, device=self.device), reduce_op="sum"))
            checkpoint["dynamic_sampling"] = {
                "buffered_groups": int(total),
                "keys": [grp.sample.key for grp in self._buffer],
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rollout_rng.load_state_dict(checkpoint.get("rollout_rng"))  # this rank's entry
        state = checkpoint.get("dynamic_sampling") or {}
        if state.get("buffered_groups"):
            log.warning(
                "resuming a dynamic-sampling run whose checkpoint was saved with %d informative groups waiting for a "
                "step (all ranks; keys on the saving rank: %s): they were sampled but are not restored and will "
                "not be trained on; the run continues with an empty buffer",
                state["buffered_groups"],
                ", ".join(state.get("keys", [])[:20]) or "-",
            )
        self._buffer, self._batches_since_step = [], 0

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # restored here, after the resumed run has built its data iterator (which draws from the global RNG)
        self._rollout_rng.apply(self.device)

    # ------------------------------------------------------------------ one step
    def training_step(self, batch: list[ChatSample], batch_idx: int) -> None:
        if skip_everywhere(self._trainer, not batch, len(batch)):
            return None  # every sample of a batch was corrupt (counted by DataHealth)
        group_size, settings = self.rollout_settings.group_size, self.loss_settings
        t0 = time.perf_counter()
        with self._rollout_rng.sampling(self.device):  # this rank's own generator (saved per rank)
            rollout = self._rollout([s.prompt for s in batch])
        t1 = time.perf_counter()
        targets = [s.target for s in batch for _ in range(group_size)]  # [N], grouped like the completions
        scores, total = self.score(rollout, targets)
        rewards = torch.tensor([np.nan if r is None else r for r in total], dtype=torch.float32)
        advantages, scored = group_advantages(rewards, group_size, settings.advantage_eps, settings.scale_rewards)
        advantages = advantages.to(self.device)
        t2 = time.perf_counter()
        stats: list[dict[str, float]] | None
        if self.rollout_settings.dynamic_sampling:
            stats = self._dynamic_step(batch, rollout, scores, total, rewards)
        else:
            stats = self._train_on(rollout, advantages)
        t3 = time.perf_counter()
        self._log_step(batch, rollout, scores, rewards, scored, stats, targets, (t1 - t0, t2 - t1, t3 - t2))

    def _train_on(self, rollout: Rollout, advantages: Tensor, stale_lp: Tensor | None = None) -> list[dict[str, float]]:
        """The `mu` updates on one scored rollout -> their stats. `stale_lp`: [N, T] old log-probs of the rows sampled
        by an earlier policy (dynamic sampling's left-over groups), NaN on the others (sampled by this one)."""
        old_lp, ref_lp = self._fixed_logprobs(rollout, need_old=self._any_rank(stale_lp is not None))
        if stale_lp is not None and old_lp is not None:
            old_lp = torch.where(torch.isnan(stale_lp), old_lp, stale_lp)
        # the entropy of the policy that sampled the rollout: measured in the first update's forward passes
        return [
            self._update(rollout, advantages, old_lp, ref_lp, with_entropy=i == 0) for i in range(self.loss_settings.mu)
        ]

    # ------------------------------------------------------------------ dynamic sampling (DAPO)
    def _dynamic_step(
        self,
        batch: list[ChatSample],
        rollout: Rollout,
        scores: dict[str, list[float | None]],
        total: list[float | None],
        rewards: Tensor,
    ) -> list[dict[str, float]] | None:
        """Keep this batch's informative groups in the buffer; step (on every rank together) once every rank holds
        as many as its batch has prompts, or after `max_dynamic_batches` batches without a step -> the update's
        stats, or None when no step was made."""
        settings, group_size = self.rollout_settings, self.rollout_settings.group_size
        keep = informative_groups(rewards, group_size).tolist()
        groups = split_groups(batch, rollout, scores, total)
        self._buffer.extend(grp for grp, k in zip(groups, keep, strict=True) if k)
        self._batches_since_step += 1
        n = len(batch)
        self.log("rollout/kept_groups", float(sum(keep)), batch_size=n)
        self.log("rollout/dropped_groups", float(len(keep) - sum(keep)), batch_size=n)
        self.log("rollout/buffered_groups", float(len(self._buffer)), batch_size=n)
        ready = self._min_over_ranks(len(self._buffer) - n) >= 0  # every rank steps together, or none does
        capped = self._batches_since_step >= settings.max_dynamic_batches  # the same count on every rank
        if not ready and not capped:
            return None
        if ready:
            take, self._buffer = self._buffer[:n], self._buffer[n:]
        else:
            take, self._buffer = (self._buffer, []) if self._buffer else (groups, [])
            log.warning(
                "dynamic sampling: %d batches without %d informative groups on every rank: rank %d steps on %s",
                self._batches_since_step,
                n,
                self.global_rank,
                f"its {len(take)} buffered groups" if take is not groups else "its latest batch (no informative group)",
            )
        self._batches_since_step = 0
        self._remember_old_logprobs(self._buffer, take)  # before the step changes the policy that sampled them
        step_rollout, _, step_total, stale = merge_groups(self.policy, take, group_size)
        step_rewards = torch.tensor([np.nan if r is None else r for r in step_total], dtype=torch.float32)
        s = self.loss_settings
        advantages, _ = group_advantages(step_rewards, group_size, s.advantage_eps, s.scale_rewards)
        return self._train_on(step_rollout, advantages.to(self.device), stale)

    @torch.no_grad()
    def _remember_old_logprobs(self, left_over: list[ScoredGroup], spare: list[ScoredGroup]) -> None:
        """Give the groups a step leaves over their log-probs under the policy that sampled them (the current one,
        before the step), so that a later step's ratio is taken against it. Under several processes the forward is
        run by every rank when any rank has such groups (FSDP2: a forward is a collective); a rank with none runs a
        throw-away one on a `spare` group."""
        pending = [grp for grp in left_over if grp.old_logprobs is None]
        if not self._any_rank(bool(pending)):
            return
        g = self.rollout_settings.group_size
        merged, _, _, _ = merge_groups(self.policy, pending or spare[:1], g)
        lp = self._logprobs(self.policy, merged)
        for i, grp in enumerate(pending):
            grp.old_logprobs = lp[i * g : (i + 1) * g, : grp.completion_ids.shape[1]]

    def _any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on any rank (one collective under several processes)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return flag
        return bool(self.trainer.strategy.reduce_boolean_decision(flag, all=False))

    def _min_over_ranks(self, n: int) -> int:
        """The smallest `n` of all ranks (dynamic sampling: a step only when every rank can make it)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return n
        return int(self.trainer.strategy.reduce(torch.tensor(float(n), device=self.device), reduce_op="min"))

    def _rollout(self, prompts: list) -> Rollout:
        """G samples for each of the B prompts, from the policy itself or from the vLLM engine."""
        s = self.rollout_settings
        if self._engine is None:
            return self.policy.generate(
                prompts,
                group_size=s.group_size,
                max_new_tokens=s.max_new_tokens,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=s.top_k,
                share_prefix=s.share_prefix,
                synced_gpus=self.synced_decoding,
            )
        if self._engine_step != self.global_step:  # the weights changed since the engine last got them
            self._engine.sync_weights(self.policy)
            self._engine_step = self.global_step
        return self._engine.generate(
            self.policy, prompts, s.group_size, s.max_new_tokens, s.temperature, s.top_p, top_k=s.top_k
        )

    def score(
        self, rollout: Rollout, targets: list[Target | None]
    ) -> tuple[dict[str, list[float | None]], list[float | None]]:
        """Every configured reward of every completion (`targets[i]`: the target of the prompt completion i
        answers) -> ({reward name: scores}, weighted totals)."""
        lengths = rollout.lengths.tolist()
        scores = {
            name: call_reward(fn, rollout.texts, targets, lengths=lengths, **self.reward_kwargs[name])
            for name, fn in self.reward_fns.items()
        }
        return scores, combine(scores, self.reward_weights)

    @torch.no_grad()
    def _fixed_logprobs(self, rollout: Rollout, need_old: bool = False) -> tuple[Tensor | None, Tensor | None]:
        """The old log-probs (mu > 1, or `need_old`: some rows come from an earlier policy) and the reference's."""
        old = ref = None
        if self.loss_settings.mu > 1 or need_old:
            old = self._logprobs(self.policy, rollout)
        if self.loss_settings.beta > 0:
            with self._reference_policy() as reference:
                ref = self._logprobs(reference, rollout)
            if self._reference is not None:
                reshard(self._reference.model)  # its root stays gathered after a no-grad forward
        return old, ref

    def _logprobs(
        self, policy: Policy, rollout: Rollout, rows: slice | None = None, prompts: slice | None = None
    ) -> Tensor:
        inputs = rollout.inputs if prompts is None else policy.slice_prompts(rollout.inputs, prompts)
        rows = rows or slice(None)
        return policy.token_logprobs(
            inputs,
            rollout.completion_ids[rows],
            rollout.completion_mask[rows],
            rollout.group_size,
            self.rollout_settings.temperature,
            self.rollout_settings.share_prefix,
        )

    def _logprobs_and_entropy(
        self, policy: Policy, rollout: Rollout, rows: slice, prompts: slice | None
    ) -> tuple[Tensor, Tensor]:
        """`_logprobs` and the per-token entropy of the temperature-scaled policy (no gradient), one forward."""
        inputs = rollout.inputs if prompts is None else policy.slice_prompts(rollout.inputs, prompts)
        return policy.token_logprobs_and_entropy(
            inputs,
            rollout.completion_ids[rows],
            rollout.completion_mask[rows],
            rollout.group_size,
            self.rollout_settings.temperature,
            self.rollout_settings.share_prefix,
        )

    def _update(
        self,
        rollout: Rollout,
        advantages: Tensor,
        old_lp: Tensor | None,
        ref_lp: Tensor | None,
        with_entropy: bool = False,
    ) -> dict[str, float]:
        """One optimizer step over the whole batch, in micro-batches of whole groups whose gradients add up to the
        whole batch's (each micro-batch's loss is `aggregate` with the batch's denominators). `with_entropy`: also
        the policy's mean entropy over the batch's real completion tokens (before this step), from the same
        forward passes."""
        s, cap = self.loss_settings, self.rollout_settings.vllm_is_cap
        sampler_lp = rollout.sample_logprobs if cap is not None else None
        if cap is not None and sampler_lp is None:
            raise RuntimeError("rollout.vllm_is_cap is set but the rollout carries no sampling log-probs")
        group_size, mask = rollout.group_size, rollout.completion_mask
        n_prompts = mask.shape[0] // group_size
        local_tokens = mask.sum().clamp(min=1)
        # the batch's denominators, as this rank's share of all ranks' (their gradients are averaged)
        tokens = self._mean_over_ranks(mask.sum().float())  # dapo
        n_rows = self._mean_over_ranks(torch.tensor(float(mask.shape[0]), device=mask.device))  # grpo, dr_grpo
        step = s.micro_batch_prompts or n_prompts
        passes = micro_batches(n_prompts, step, self._max_over_ranks(-(-n_prompts // step)))
        opt = cast(Optimizer, self.optimizers())  # the one optimizer (a LightningOptimizer: an instance of its class)
        totals = {"loss": 0.0, "kl": 0.0, "clipped": 0.0, "entropy": 0.0}
        for i, (prompts, weight) in enumerate(passes):
            rows = slice(prompts.start * group_size, prompts.stop * group_size)
            with nullcontext() if i == len(passes) - 1 else self._no_backward_sync():
                sliced = prompts if step < n_prompts else None
                if with_entropy:
                    lp, ent = self._logprobs_and_entropy(self.policy, rollout, rows, sliced)  # [n, T] each
                else:
                    lp, ent = self._logprobs(self.policy, rollout, rows, sliced), None  # [n, T]
                m = mask[rows]
                old = old_lp[rows] if old_lp is not None else lp.detach()
                if s.importance_level == "sequence":  # GSPO
                    per_token, clipped = sequence_clipped_surrogate(
                        lp, old, advantages[rows], m, s.epsilon, s.epsilon_high
                    )
                else:
                    per_token, clipped = clipped_surrogate(lp, old, advantages[rows], s.epsilon, s.epsilon_high)
                if cap is not None and sampler_lp is not None:  # TIS: vLLM's sampler drew these tokens
                    per_token = per_token * truncated_is_weights(old, sampler_lp[rows], cap)
                kl = kl_estimate(lp, ref_lp[rows], s.kl_estimator) if ref_lp is not None else torch.zeros_like(lp)
                per_token = per_token + s.beta * kl
                loss = aggregate(
                    per_token,
                    m,
                    s.aggregation,
                    max_len=self.rollout_settings.max_new_tokens,
                    num_rows=n_rows,
                    num_tokens=tokens,
                )
                self.manual_backward(loss * weight)
            if weight == 0.0:
                continue  # a pass that only keeps this rank's collectives in step with a rank of more micro-batches
            mf = m.float()
            totals["loss"] += float(loss.detach())
            totals["kl"] += float((kl.detach() * mf).sum())
            totals["clipped"] += float((clipped.float() * mf).sum())
            if ent is not None:
                totals["entropy"] += float((ent * mf).sum())
        grad_norm = total_grad_norm(self.policy.parameters())  # before clipping (every rank: a collective on FSDP2)
        lr = first_lr(opt)  # the rate of this step (the scheduler moves it after)
        if s.max_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=s.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        scheduler = cast("LRScheduler | None", self.lr_schedulers())  # at most one (configure_optimizers)
        if scheduler is not None:
            scheduler.step()
        n_tokens = float(local_tokens)
        out = {"loss": totals["loss"], "kl": totals["kl"] / n_tokens, "clip_ratio": totals["clipped"] / n_tokens}
        out["lr"] = lr
        if grad_norm is not None:
            out["grad_norm"] = float(grad_norm)
        if with_entropy:
            out["entropy"] = totals["entropy"] / n_tokens
        return out

    def _mean_over_ranks(self, count: Tensor) -> Tensor:
        """A count (float scalar) summed over all ranks / world size: as a loss denominator, each rank's loss is its
        part of the whole batch's once DDP / FSDP2 average the ranks' gradients, also when ranks hold different
        numbers of rows or tokens."""
        if self.trainer.world_size > 1:
            count = self.trainer.strategy.reduce(count.clone(), reduce_op="mean")
        return count.clamp(min=1)

    def _max_over_ranks(self, n: int) -> int:
        """The largest `n` of all ranks (micro-batch passes: under DDP and FSDP2 each backward is a collective)."""
        if self.trainer.world_size == 1:
            return n
        return int(self.trainer.strategy.reduce(torch.tensor(float(n), device=self.device), reduce_op="max"))

    def _no_backward_sync(self):
        """DDP: skip the gradient all-reduce of a micro-batch that is not the last. Elsewhere (one device, FSDP2,
        which reduce-scatters every backward to keep gradients sharded) a plain context."""
        strategy = self.trainer.strategy
        return strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validation_step(self, batch: list[ChatSample], batch_idx: int) -> None:
        # greedy decoding with synced_gpus is a collective: ranks skip together (an all-corrupt batch on one rank)
        if skip_everywhere(self._trainer, not batch, len(batch)):
            return
        rollout = self.policy.generate(
            [s.prompt for s in batch],
            group_size=1,
            max_new_tokens=self.rollout_settings.max_new_tokens,
            do_sample=False,
            synced_gpus=self.synced_decoding,
        )
        self._val_counts.add(rollout.texts, rollout.lengths.tolist(), [s.target for s in batch])

    def on_validation_epoch_start(self) -> None:
        self._val_counts = ValidationCounts()

    def on_validation_epoch_end(self) -> None:
        # one all-reduce of fixed-size sums on every rank, whatever tasks each rank's samples held (a per-task
        # `self.log(..., sync_dist=True)` only on the ranks that saw the task would leave the others waiting)
        sums = torch.tensor(self._val_counts.vector(), dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        for name, value in ValidationCounts.metrics(sums.tolist()).items():
            self.log(f"val/{name}", value, prog_bar=name == "pairing_acc")

    # ------------------------------------------------------------------ logging
    def _log_step(self, batch, rollout, scores, rewards, scored, stats, targets, seconds) -> None:
        """The batch's rollout (rewards, accuracy, lengths, times) and, when a step was made (`stats`: dynamic sampling
        makes none on some batches), the update's loss, KL, clip ratio and entropy."""
        n = len(batch)
        log = lambda name, value, **kw: self.log(name, float(value), batch_size=n, **kw)
        log_peak_memory(self, batch_size=n)
        if stats is not None:
            last = stats[-1]
            log("train/loss", last["loss"], prog_bar=True)
            log("train/kl", last["kl"])
            log("train/clip_ratio", last["clip_ratio"])
            log("train/entropy", stats[0]["entropy"])  # mean over real completion tokens, temperature-scaled policy
            log("train/lr", last["lr"])
            if "grad_norm" in last:
                log("train/grad_norm", last["grad_norm"])  # of the last update, before clipping
        for name, acc in task_accuracy(rollout.texts, targets).items():
            log(f"train/{name}", acc, prog_bar=name == "pairing_acc")
        valid = rewards[scored]
        log("rewards/total/mean", valid.mean() if len(valid) else 0.0, prog_bar=True)
        log("rewards/total/std", valid.std() if len(valid) > 1 else 0.0)
        log("rewards/unscored", (~scored).sum())
        for name, values in scores.items():
            vals = [v for v in values if v is not None]
            log(f"rewards/{name}/mean", np.mean(vals) if vals else 0.0)
        log("completions/mean_length", rollout.lengths.float().mean())
        log("completions/clipped_ratio", rollout.truncated.float().mean())
        for name, sec in zip(("rollout", "score", "update"), seconds, strict=True):
            if name != "update" or stats is not None:
                log(f"time/{name}_s", sec)
        every = self.log_completions_every_n_steps
        if stats is not None and every and (self.global_step // self.loss_settings.mu) % every == 0:
            self._log_examples(batch, rollout, scores)

    def _log_examples(self, batch: list[ChatSample], rollout: Rollout, scores) -> None:
        tb = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None:
            return
        g = rollout.group_size
        rows = ["| key | answer | completion | " + " | ".join(scores) + " |", "|---|---|---|" + "---|" * len(scores)]
        for i in range(min(2, len(batch)) * g):
            s = batch[i // g]
            cells = [f"{scores[name][i]:.3f}" if scores[name][i] is not None else "-" for name in scores]
            text = rollout.texts[i].replace("|", "\\|").replace("\n", " ")[:400]
            rows.append(f"| {s.key} | {_truth(s.target)} | {text} | " + " | ".join(cells) + " |")
        tb.experiment.add_text("completions", "\n".join(rows), self.global_step)
        images = batch[0].prompt.images
        h = 128
        strip = [np.asarray(im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h))) for im in images]
        tb.experiment.add_image(
            "episode/ground_then_candidates", np.concatenate(strip, axis=1), self.global_step, dataformats="HWC"
        )


def micro_batches(n_prompts: int, step: int, n_passes: int) -> list[tuple[slice, float]]:
    """The backward passes of one update: (prompts, loss weight) of each micro-batch of `step` whole groups, preceded
    by zero-weight repeats of the first one until there are `n_passes` (the most any rank needs), so that every rank
    runs the same number of forward/backward collectives; the last pass is a real one (DDP syncs its gradients).

    >>> micro_batches(3, 2, 2)
    [(slice(0, 2, None), 1.0), (slice(2, 3, None), 1.0)]
    >>> micro_batches(1, 1, 3)
    [(slice(0, 1, None), 0.0), (slice(0, 1, None), 0.0), (slice(0, 1, None), 1.0)]
    """
    real = [(slice(start, min(start + step, n_prompts)), 1.0) for start in range(0, n_prompts, step)]
    if n_passes < len(real):
        raise ValueError(f"{len(real)} micro-batches but only {n_passes} passes")
    return [(real[0][0], 0.0)] * (n_passes - len(real)) + real


def task_accuracy(texts: list[str], targets: list[Target | None]) -> dict[str, float]:
    """The share of correct completions per task present, by the task's own check (pairing: the letter;
    geolocation: within its `correct_km`), as {"pairing_acc": .., "geolocate_acc": ..}; samples without a target
    are left out.

    >>> from geor1.tasks import PairingTarget
    >>> task_accuracy(["<answer>B</answer>", "<answer>A</answer>", "x"], [PairingTarget(2, 1)] * 2 + [None])
    {'pairing_acc': 0.5}
    """
    hits: dict[str, list[bool]] = {}
    for text, t in zip(texts, targets, strict=True):
        if t is not None:
            hits.setdefault(t.task, []).append(task_of(t).is_correct(text, t))
    return {f"{name}_acc": float(np.mean(h)) for name, h in hits.items()}


class ValidationCounts:
    """Sums over a validation epoch, as a fixed-order vector (the same length on every rank, so one all-reduce
    adds them up): completions, well-formed ones, completion tokens, and per task its samples and correct ones.

    >>> from geor1.tasks import PairingTarget
    >>> c = ValidationCounts()
    >>> c.add(["<think>a</think><answer>B</answer>", "B"], [5, 1], [PairingTarget(2, 1), PairingTarget(2, 0)])
    >>> ValidationCounts.metrics(c.vector())
    {'format_rate': 0.5, 'mean_length': 3.0, 'pairing_acc': 0.5}
    """

    def __init__(self) -> None:
        self.n = self.well_formed = self.tokens = 0
        self.per_task = {name: [0, 0] for name in TASK_NAMES}  # name -> [samples, correct]

    def add(self, texts: list[str], lengths: list[int], targets: list[Target | None]) -> None:
        self.n += len(texts)
        self.well_formed += sum(is_well_formed(t) for t in texts)
        self.tokens += sum(lengths)
        for text, t in zip(texts, targets, strict=True):
            if t is not None:
                counts = self.per_task[t.task]
                counts[0] += 1
                counts[1] += task_of(t).is_correct(text, t)

    def vector(self) -> list[float]:
        return [self.n, self.well_formed, self.tokens, *(float(x) for name in TASK_NAMES for x in self.per_task[name])]

    @staticmethod
    def metrics(vector: list[float]) -> dict[str, float]:
        """{"format_rate", "mean_length", "<task>_acc" for every task with samples} from a (summed) `vector`."""
        n, well_formed, tokens, *per_task = vector
        if n == 0:
            return {}
        out = {"format_rate": well_formed / n, "mean_length": tokens / n}
        for i, name in enumerate(TASK_NAMES):
            samples, correct = per_task[2 * i], per_task[2 * i + 1]
            if samples:
                out[f"{name}_acc"] = correct / samples
        return out


def _truth(target: Target | None) -> str:
    """The right answer, for the completions table."""
    if isinstance(target, PairingTarget):
        return target.letter
    if isinstance(target, GeoTarget):
        return f"{target.lat:.4f}, {target.lon:.4f}"
    return "" if target is None else str(target.answer)  # describe: the word or letter


def disable_dropout_in(module: nn.Module) -> int:
    """Every `nn.Dropout` of `module` to p=0 and every float `attention_dropout` / `dropout` attribute of its
    attention modules to 0.0 (LoRA dropout is an `nn.Dropout` too) -> how many were changed."""
    n = 0
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
            n += 1
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(m, name, None), float):
                setattr(m, name, 0.0)
                n += 1
    return n
