"""`SFTModule`: scaffolding — next-token loss on the assistant's tokens only (system, user and image tokens masked),
over chain-of-thought exemplars. The labels come from `Policy.encode_sft`."""

from __future__ import annotations

import logging

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from geor1 import Geor1Error
from geor1.data.sample import ChatSample
from geor1.model.logprobs import tiled_lm_loss
from geor1.model.policy import IGNORE_INDEX, Policy
from geor1.objectives.base import PolicyModule, skip_everywhere
from geor1.objectives.memory import log_peak_memory
from geor1.objectives.sharding import ShardingSpec
from geor1.tasks import is_well_formed

log = logging.getLogger(__name__)


def masked_lm_loss(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean next-token cross-entropy over labelled positions, and token accuracy, from full logits.

    The reference for `SFTModule`'s tiled loss (`geor1.model.logprobs.tiled_lm_loss`), which gives the same values
    without the [B, L, V] float32 logits. logits: [B, L, V]; labels: [B, L] with IGNORE_INDEX on masked positions
    (position t predicts labels[t+1]) -> (loss, correct tokens, labelled tokens) as scalars.
    """
    shift_logits = logits[:, :-1].float()  # [B, L-1, V]
    shift_labels = labels[:, 1:]  # [B, L-1]
    keep = shift_labels != IGNORE_INDEX
    n = keep.sum()
    loss = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    ) / n.clamp(min=1)
    correct = ((shift_logits.argmax(-1) == shift_labels) & keep).sum()
    return loss, correct, n


class SFTModule(PolicyModule):
    """Supervised fine-tuning on (prompt, response) samples.

    Args:
        policy: the model to train.
        optimizer: optimizer factory (YAML `class_path`/`init_args`).
        scheduler: optional LR scheduler factory.
        max_length: prompt+response tokens per sample; longer responses are cut at the end.
        num_val_generations: validation samples whose greedy completions are logged as TensorBoard text.
        max_new_tokens: tokens generated for those samples.
        export_dir: write the trained policy as a Hugging Face folder there when fit ends (unset under `geor1 fit`:
            `<trainer.default_root_dir>/model`).
        loss_tile: response positions per LM-head tile in the loss (the [B, L, V] logits are never formed: only
            [loss_tile, V] at a time, recomputed in backward).
        sharding: FSDP2 settings under `ModelParallelStrategy` (`geor1.objectives.sharding.ShardingSpec`).
    """

    def __init__(
        self,
        policy: Policy,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        max_length: int = 2048,
        num_val_generations: int = 2,
        max_new_tokens: int = 64,
        export_dir: str | None = None,
        loss_tile: int = 256,
        sharding: ShardingSpec | None = None,
    ) -> None:
        super().__init__(policy, optimizer, scheduler, export_dir, sharding)
        self.save_hyperparameters(ignore=["policy", "optimizer", "scheduler", "sharding"])
        self.max_length = max_length
        self.num_val_generations = num_val_generations
        self.max_new_tokens = max_new_tokens
        if loss_tile < 1:
            raise ValueError(f"loss_tile must be >= 1, got {loss_tile}")
        self.loss_tile = loss_tile

    def _step(self, batch: list[ChatSample], stage: str) -> Tensor:
        responses = [s.response for s in batch if s.response is not None]
        if len(responses) < len(batch):
            missing = [s.key for s in batch if s.response is None]
            raise Geor1Error(
                f"SFT trains on exemplars (a response per sample), but samples {', '.join(missing[:3])} have none: "
                "these shards are not SFT data; write exemplars with `geor1 cot synthesize --shards <these shards> "
                "--out <folder> --task pairing|geolocate` and train on that folder (data.init_args.roots)"
            )
        inputs, labels = self.policy.encode_sft([s.prompt for s in batch], responses, self.max_length)
        hidden = self.policy.final_hidden(inputs)  # [B, L, H], normed: what the LM head reads
        loss, correct, n = tiled_lm_loss(hidden, self.policy.lm_head, labels, tile=self.loss_tile)
        bs = len(batch)
        train = stage == "train"
        if train:
            loss, logged = self._global_token_mean(loss, n)
        else:
            logged = loss
        self.log(f"{stage}/loss", logged, prog_bar=True, batch_size=bs, sync_dist=not train)
        self.log(f"{stage}/token_acc", correct / n.clamp(min=1), batch_size=bs, sync_dist=not train)
        return loss

    def _global_token_mean(self, loss: Tensor, n: Tensor) -> tuple[Tensor, Tensor]:
        """(this rank's share of the token mean over every rank's labelled tokens, that mean, detached).

        DDP and FSDP2 average the ranks' gradients, so backpropagating loss * n * world / n_all gives the update a
        single process computes on the whole batch (each rank's own token mean would weigh a rank's tokens by
        1 / its own count). One process: the loss unchanged."""
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            return loss, loss.detach()
        strategy = self.trainer.strategy
        n_all = strategy.reduce(n.detach().float(), reduce_op="sum").clamp(min=1)
        mean_all = strategy.reduce(loss.detach() * n, reduce_op="sum") / n_all
        return loss * n * world / n_all, mean_all

    def training_step(self, batch: list[ChatSample], batch_idx: int) -> Tensor | None:
        if skip_everywhere(self._trainer, not batch, len(batch)):
            return None  # every sample of a batch was corrupt (counted by DataHealth)
        loss = self._step(batch, "train")
        log_peak_memory(self, batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[ChatSample], batch_idx: int) -> Tensor | None:
        if not batch:
            return None
        loss = self._step(batch, "val")
        if batch_idx == 0 and self.num_val_generations > 0:
            self._log_generations(batch[: self.num_val_generations])
        return loss

    def _log_generations(self, samples: list[ChatSample]) -> None:
        """Greedy completions of a few validation prompts: `val/format_rate` (exact <think>/<answer> format) and a
        TensorBoard text table next to the targets."""
        rollout = self.policy.generate(
            [s.prompt for s in samples],
            group_size=1,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            synced_gpus=self.synced_decoding,
        )
        well_formed = [is_well_formed(t) for t in rollout.texts]
        self.log("val/format_rate", sum(well_formed) / len(samples), batch_size=len(samples))
        rows = ["| key | target | generated |", "|---|---|---|"]
        for s, text in zip(samples, rollout.texts, strict=True):
            rows.append(f"| {s.key} | {_cell(s.response)} | {_cell(text)} |")
        for lg in self.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_text("val/generations", "\n".join(rows), self.global_step)


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")[:500]
