"""`GRPOModule`: elevating — GRPO on pairing episodes (or coordinate answers) with verifiable rewards.

Per batch of B prompts: rollout (G samples each, the prompt prefilled once) -> score (registered rewards, weights
honoured) -> group-normalised advantages -> `mu` policy updates of the clipped surrogate + beta * KL(pi || ref) ->
log. The maths are the plain functions of `grpo_math`.

Departures from the paper's public trainer, on purpose: rewards are weighted as configured (its weights were
ignored); temperature and top_p are settings (it hard-wired them); the length reward is conditioned on correctness;
each prompt and its images are encoded once per rollout and once per log-prob pass, not once per sample;
a sample no reward can score gets zero advantage (never NaN); G < 2 is an error. With mu = 1 the old policy is the
current one (ratio 1, as in TRL); with mu > 1 the old log-probs are stored before the first update.
"""

from __future__ import annotations

import copy
import logging
import time
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import ParallelStrategy
from torch import Tensor, nn

from geor1 import Geor1Error
from geor1.answers import parse_letter, split_tags
from geor1.model.chat import ChatSample
from geor1.model.policy import Policy, Rollout
from geor1.model.vllm_rollout import VLLMRollout, require_vllm
from geor1.objectives.base import PolicyModule, skip_everywhere
from geor1.objectives.grpo_math import AGGREGATIONS, KL_ESTIMATORS, aggregate, clipped_surrogate, \
    group_advantages, kl_estimate, truncated_is_weights
from geor1.objectives.memory import log_peak_memory
from geor1.objectives.rollout_rng import RolloutRNG
from geor1.objectives.sharding import ShardingSpec, is_sharded, reshard, shard_policy
from geor1.rewards import combine, get_reward
from geor1.rewards.registry import call_reward

log = logging.getLogger(__name__)


class GRPOModule(PolicyModule):
    """GRPO with the Geo-R1 recipe as defaults (G=8, beta=0.04 with k3, epsilon=0.2, mu=1, temperature 1.0).

    Args:
        policy: the model to train (a local folder, e.g. the SFT export, or a TinyPolicy).
        optimizer: optimizer factory (the paper: AdamW, lr 1e-6).
        scheduler: optional LR scheduler factory, stepped every optimizer step.
        rewards: reward name (registered, or a dotted import path) -> weight.
        reward_kwargs: extra keyword arguments per reward, e.g. {"length": {"max_len": 1024}}.
        num_generations: G samples per prompt (>= 2).
        max_new_tokens: completion length limit (the paper: 2048).
        temperature: sampling temperature (also applied to the log-probs).
        top_p: nucleus sampling.
        top_k: sample among the k most likely tokens (None: all). With top_p < 1 or top_k the ratio and the KL still
            use the untruncated temperature-scaled policy (as TRL and verl do): a warning says so.
        beta: KL penalty weight; 0 needs no reference model.
        kl_estimator: "k3" (the paper's) or "k1".
        epsilon: clip range below (and above, unless epsilon_high).
        epsilon_high: DAPO's clip-higher upper range.
        mu: policy updates per batch of rollouts.
        loss_aggregation: "grpo" (per-sequence mean, then batch mean), "dr_grpo" or "dapo" (token-level).
        scale_rewards: divide by the group std (False: Dr. GRPO's r - mean).
        advantage_eps: the epsilon of (r - mean) / (std + eps).
        share_prefix: encode each prompt once for its G samples (rollout and log-prob passes).
        rollout_backend: "hf" (the policy's own `generate`) or "vllm" (a colocated vLLM engine, weights synced
            every step; needs the vllm package and a GPU; see `geor1.model.vllm_rollout`).
        vllm_engine: extra `vllm.LLM` arguments for the vllm backend, e.g. {"gpu_memory_utilization": 0.3}.
        vllm_is_cap: vllm backend only: truncated importance sampling (TIS) against the gap between vLLM's sampler
            and the policy: each token's surrogate is weighted by min(pi_old / pi_vllm, cap), pi_vllm being vLLM's
            log-prob of the sampled token (e.g. 2.0); None: off.
        micro_batch_prompts: prompts per backward pass (memory); None: the whole batch at once.
        max_grad_norm: gradient clipping (None: off); over all ranks' shards under FSDP2.
        disable_dropout: set every dropout of the policy (LoRA dropout included) to p=0, so that the old and the
            new log-probs of the same weights agree (TRL's `disable_dropout`).
        sharding: FSDP2 settings under `ModelParallelStrategy` (the reference model is sharded like the policy,
            optionally offloaded to CPU); ignored by single-device and DDP runs.
        log_completions_every_n_steps: TensorBoard text table of completions and an episode's images.
        export_dir: write the trained policy as a Hugging Face folder there when fit ends.
    """

    def __init__(
        self,
        policy: Policy,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        rewards: dict[str, float] | None = None,
        reward_kwargs: dict[str, dict[str, Any]] | None = None,
        num_generations: int = 8,
        max_new_tokens: int = 2048,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        beta: float = 0.04,
        kl_estimator: str = "k3",
        epsilon: float = 0.2,
        epsilon_high: float | None = None,
        mu: int = 1,
        loss_aggregation: str = "grpo",
        scale_rewards: bool = True,
        advantage_eps: float = 1e-4,
        share_prefix: bool = True,
        rollout_backend: str = "hf",
        vllm_engine: dict[str, Any] | None = None,
        vllm_is_cap: float | None = None,
        micro_batch_prompts: int | None = None,
        max_grad_norm: float | None = 1.0,
        log_completions_every_n_steps: int = 50,
        export_dir: str | None = None,
        disable_dropout: bool = True,
        sharding: ShardingSpec | None = None,
    ) -> None:
        super().__init__(policy, optimizer, scheduler, export_dir, sharding)
        self.save_hyperparameters(ignore=["policy", "optimizer", "scheduler", "sharding"])
        if num_generations < 2:
            raise Geor1Error(f"GRPO needs num_generations >= 2 (a group of one has no advantage), got "
                             f"{num_generations}")
        if loss_aggregation not in AGGREGATIONS:
            raise Geor1Error(f"loss_aggregation must be one of {AGGREGATIONS}, got {loss_aggregation!r}")
        if kl_estimator not in KL_ESTIMATORS:
            raise Geor1Error(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
        if mu < 1:
            raise Geor1Error(f"mu must be >= 1, got {mu}")
        if rollout_backend not in ("hf", "vllm"):
            raise Geor1Error(f"rollout_backend must be 'hf' or 'vllm', got {rollout_backend!r}")
        if rollout_backend == "vllm":
            require_vllm()  # fail at construction, before any data or model work
        if vllm_is_cap is not None and (rollout_backend != "vllm" or not vllm_is_cap > 0):
            raise Geor1Error(f"vllm_is_cap ({vllm_is_cap}) needs rollout_backend 'vllm' and a cap > 0")
        if top_p < 1.0 or top_k is not None:
            log.warning("top_p=%s, top_k=%s: rollouts sample from a truncated distribution while the ratio and the KL "
                        "use the full temperature-scaled policy (slightly off-policy, as in TRL and verl)", top_p, top_k)
        if top_k is not None and top_k < 1:
            raise Geor1Error(f"top_k must be >= 1 or null, got {top_k}")
        if disable_dropout:
            n = disable_dropout_in(self.policy)
            log.debug("dropout off in %d policy modules", n)
        self.reward_weights = dict(rewards or {"accuracy": 1.0, "format": 1.0, "length": 1.0, "repetition": 1.0})
        self.reward_fns = {name: get_reward(name) for name in self.reward_weights}
        self.reward_kwargs = {name: dict((reward_kwargs or {}).get(name, {})) for name in self.reward_weights}
        self.automatic_optimization = False
        self._reference: Policy | None = None  # full fine-tuning with beta > 0: a frozen copy (not a submodule)
        self._engine: VLLMRollout | None = None  # rollout_backend "vllm"
        self._engine_step = -1  # the global step whose weights the engine holds
        self._rollout_rng = RolloutRNG()  # this rank's sampling generator, saved per rank in checkpoints

    # ------------------------------------------------------------------ reference model
    def setup(self, stage: str) -> None:
        # Lightning calls setup before it restores a checkpoint: the reference is the policy as constructed (the
        # initial model), also when a run resumes from a checkpoint of a trained policy.
        if stage == "fit" and self.hparams.beta > 0 and self.policy.lora is None and self._reference is None:
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
        if self.hparams.rollout_backend == "vllm" and self._engine is None:
            self._engine = VLLMRollout(self.policy, engine_kwargs=self.hparams.vllm_engine,
                                       seed=torch.initial_seed() % 2**31 + self.global_rank,
                                       sampling_logprobs=self.hparams.vllm_is_cap is not None)

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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._rollout_rng.load_state_dict(checkpoint.get("rollout_rng"))  # this rank's entry

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # restored here, after the resumed run has built its data iterator (which draws from the global RNG)
        self._rollout_rng.apply(self.device)

    # ------------------------------------------------------------------ one step
    def training_step(self, batch: list[ChatSample], batch_idx: int) -> None:
        if skip_everywhere(self._trainer, not batch, len(batch)):
            return None  # every sample of a batch was corrupt (counted by DataHealth)
        hp = self.hparams
        g = hp.num_generations
        t0 = time.perf_counter()
        with self._rollout_rng.sampling(self.device):  # this rank's own generator (saved per rank)
            rollout = self._rollout([s.prompt for s in batch])
        t1 = time.perf_counter()
        metas = [s.meta for s in batch for _ in range(g)]  # [N], grouped like the completions
        scores, total = self.score(rollout, metas)
        rewards = torch.tensor([np.nan if r is None else r for r in total], dtype=torch.float32)
        advantages, scored = group_advantages(rewards, g, hp.advantage_eps, hp.scale_rewards)
        advantages = advantages.to(self.device)
        t2 = time.perf_counter()
        old_lp, ref_lp = self._fixed_logprobs(rollout)
        stats = [self._update(rollout, advantages, old_lp, ref_lp) for _ in range(hp.mu)]
        t3 = time.perf_counter()
        self._log_step(batch, rollout, scores, rewards, scored, stats, metas, (t1 - t0, t2 - t1, t3 - t2))

    def _rollout(self, prompts: list) -> Rollout:
        """G samples for each of the B prompts, from the policy itself or from the vLLM engine."""
        hp = self.hparams
        if self._engine is None:
            return self.policy.generate(prompts, num_samples=hp.num_generations, max_new_tokens=hp.max_new_tokens,
                                        temperature=hp.temperature, top_p=hp.top_p, top_k=hp.top_k,
                                        share_prefix=hp.share_prefix,
                                        synced_gpus=self.synced_decoding)
        if self._engine_step != self.global_step:  # the weights changed since the engine last got them
            self._engine.sync_weights(self.policy)
            self._engine_step = self.global_step
        return self._engine.generate(self.policy, prompts, hp.num_generations, hp.max_new_tokens, hp.temperature,
                                     hp.top_p, top_k=hp.top_k)

    def score(self, rollout: Rollout, metas: list[dict[str, Any]]
              ) -> tuple[dict[str, list[float | None]], list[float | None]]:
        lengths = rollout.lengths.tolist()
        scores = {name: call_reward(fn, rollout.texts, metas, lengths=lengths, **self.reward_kwargs[name])
                  for name, fn in self.reward_fns.items()}
        return scores, combine(scores, self.reward_weights)

    @torch.no_grad()
    def _fixed_logprobs(self, rollout: Rollout) -> tuple[Tensor | None, Tensor | None]:
        hp = self.hparams
        old = ref = None
        if hp.mu > 1:
            old = self._logprobs(self.policy, rollout)
        if hp.beta > 0:
            with self._reference_policy() as reference:
                ref = self._logprobs(reference, rollout)
            if self._reference is not None:
                reshard(self._reference.model)  # its root stays gathered after a no-grad forward
        return old, ref

    def _logprobs(self, policy: Policy, rollout: Rollout, rows: slice | None = None,
                  prompts: slice | None = None) -> Tensor:
        inputs = rollout.inputs if prompts is None else policy.slice_prompts(rollout.inputs, prompts)
        rows = rows or slice(None)
        return policy.token_logprobs(inputs, rollout.completion_ids[rows], rollout.completion_mask[rows],
                                     rollout.num_samples, self.hparams.temperature, self.hparams.share_prefix)

    def _update(self, rollout: Rollout, advantages: Tensor, old_lp: Tensor | None, ref_lp: Tensor | None
                ) -> dict[str, float]:
        """One optimizer step over the whole batch, in micro-batches of whole groups whose gradients add up to the
        whole batch's (each micro-batch's loss is `aggregate` with the batch's denominators)."""
        hp = self.hparams
        g, mask = rollout.num_samples, rollout.completion_mask
        n_prompts = mask.shape[0] // g
        local_tokens = mask.sum().clamp(min=1)
        # the batch's denominators, as this rank's share of all ranks' (their gradients are averaged)
        tokens = self._mean_over_ranks(mask.sum().float())  # dapo
        n_rows = self._mean_over_ranks(torch.tensor(float(mask.shape[0]), device=mask.device))  # grpo, dr_grpo
        step = hp.micro_batch_prompts or n_prompts
        passes = micro_batches(n_prompts, step, self._max_over_ranks(-(-n_prompts // step)))
        opt = self.optimizers()
        totals = {"loss": 0.0, "kl": 0.0, "clipped": 0.0}
        for i, (prompts, weight) in enumerate(passes):
            rows = slice(prompts.start * g, prompts.stop * g)
            with nullcontext() if i == len(passes) - 1 else self._no_backward_sync():
                lp = self._logprobs(self.policy, rollout, rows, prompts if step < n_prompts else None)  # [n, T]
                m = mask[rows]
                old = old_lp[rows] if old_lp is not None else lp.detach()
                per_token, clipped = clipped_surrogate(lp, old, advantages[rows], hp.epsilon, hp.epsilon_high)
                if hp.vllm_is_cap is not None:  # TIS: vLLM's sampler drew these tokens, not the policy
                    per_token = per_token * truncated_is_weights(old, rollout.sample_logprobs[rows], hp.vllm_is_cap)
                kl = kl_estimate(lp, ref_lp[rows], hp.kl_estimator) if ref_lp is not None else torch.zeros_like(lp)
                per_token = per_token + hp.beta * kl
                loss = aggregate(per_token, m, hp.loss_aggregation, max_len=hp.max_new_tokens, num_rows=n_rows,
                                 num_tokens=tokens)
                self.manual_backward(loss * weight)
            if weight == 0.0:
                continue  # a pass that only keeps this rank's collectives in step with a rank of more micro-batches
            mf = m.float()
            totals["loss"] += float(loss.detach())
            totals["kl"] += float((kl.detach() * mf).sum())
            totals["clipped"] += float((clipped.float() * mf).sum())
        if hp.max_grad_norm is not None:
            self.clip_gradients(opt, gradient_clip_val=hp.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()
        opt.zero_grad(set_to_none=True)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        n_tokens = float(local_tokens)
        return {"loss": totals["loss"], "kl": totals["kl"] / n_tokens, "clip_ratio": totals["clipped"] / n_tokens}

    def _mean_over_ranks(self, count: Tensor) -> Tensor:
        """A count (float scalar) summed over all ranks / world size: as a loss denominator, each rank's loss is its
        part of the whole batch's once DDP / FSDP2 average the ranks' gradients, also when ranks hold different
        numbers of rows or tokens."""
        strategy = self.trainer.strategy
        if strategy.world_size > 1:
            count = strategy.reduce(count.clone(), reduce_op="mean")
        return count.clamp(min=1)

    def _max_over_ranks(self, n: int) -> int:
        """The largest `n` of all ranks (micro-batch passes: under DDP and FSDP2 each backward is a collective)."""
        strategy = self.trainer.strategy
        if strategy.world_size == 1:
            return n
        return int(strategy.reduce(torch.tensor(float(n), device=self.device), reduce_op="max"))

    def _no_backward_sync(self):
        """DDP: skip the gradient all-reduce of a micro-batch that is not the last. Elsewhere (one device, FSDP2,
        which reduce-scatters every backward to keep gradients sharded) a plain context."""
        strategy = self.trainer.strategy
        return strategy.block_backward_sync() if isinstance(strategy, ParallelStrategy) else nullcontext()

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validation_step(self, batch: list[ChatSample], batch_idx: int) -> None:
        if not batch:
            return
        rollout = self.policy.generate([s.prompt for s in batch], num_samples=1,
                                       max_new_tokens=self.hparams.max_new_tokens, do_sample=False,
                                       synced_gpus=self.synced_decoding)
        n = len(batch)
        fmt = np.mean([split_tags(t) is not None for t in rollout.texts])
        self.log("val/format_rate", float(fmt), batch_size=n, sync_dist=True)
        self.log("val/mean_length", float(rollout.lengths.float().mean()), batch_size=n, sync_dist=True)
        acc = _pairing_acc(rollout.texts, [s.meta for s in batch])
        if acc is not None:
            self.log("val/pairing_acc", acc, batch_size=n, sync_dist=True, prog_bar=True)

    # ------------------------------------------------------------------ logging
    def _log_step(self, batch, rollout, scores, rewards, scored, stats, metas, seconds) -> None:
        n = len(batch)
        log = lambda name, value, **kw: self.log(name, float(value), batch_size=n, **kw)  # noqa: E731
        log_peak_memory(self, batch_size=n)
        last = stats[-1]
        log("train/loss", last["loss"], prog_bar=True)
        log("train/kl", last["kl"])
        log("train/clip_ratio", last["clip_ratio"])
        acc = _pairing_acc(rollout.texts, metas)
        if acc is not None:
            log("train/pairing_acc", acc, prog_bar=True)
        valid = rewards[scored]
        log("rewards/total/mean", valid.mean() if len(valid) else 0.0, prog_bar=True)
        log("rewards/total/std", valid.std() if len(valid) > 1 else 0.0)
        log("rewards/unscored", (~scored).sum())
        for name, values in scores.items():
            vals = [v for v in values if v is not None]
            log(f"rewards/{name}/mean", np.mean(vals) if vals else 0.0)
        log("completions/mean_length", rollout.lengths.float().mean())
        log("completions/clipped_ratio", rollout.truncated.float().mean())
        for name, sec in zip(("rollout", "score", "update"), seconds):
            log(f"time/{name}_s", sec)
        every = self.hparams.log_completions_every_n_steps
        if every and (self.global_step // self.hparams.mu) % every == 0:
            self._log_examples(batch, rollout, scores)

    def _log_examples(self, batch: list[ChatSample], rollout: Rollout, scores) -> None:
        tb = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if tb is None:
            return
        g = rollout.num_samples
        rows = ["| key | answer | completion | " + " | ".join(scores) + " |",
                "|---|---|---|" + "---|" * len(scores)]
        for i in range(min(2, len(batch)) * g):
            s = batch[i // g]
            cells = [f"{scores[name][i]:.3f}" if scores[name][i] is not None else "-" for name in scores]
            text = rollout.texts[i].replace("|", "\\|").replace("\n", " ")[:400]
            rows.append(f"| {s.key} | {s.meta.get('answer_letter', '')} | {text} | " + " | ".join(cells) + " |")
        tb.experiment.add_text("completions", "\n".join(rows), self.global_step)
        images = batch[0].prompt.images
        h = 128
        strip = [np.asarray(im.convert("RGB").resize((max(1, round(im.width * h / im.height)), h))) for im in images]
        tb.experiment.add_image("episode/ground_then_candidates", np.concatenate(strip, axis=1), self.global_step,
                                dataformats="HWC")


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


def _pairing_acc(texts: list[str], metas: list[dict[str, Any]]) -> float | None:
    hits = [parse_letter(t, int(m["k"])) == m["answer_letter"] for t, m in zip(texts, metas)
            if "answer_letter" in m and "k" in m]
    return float(np.mean(hits)) if hits else None


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
