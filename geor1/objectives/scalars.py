"""Optimizer scalars every objective logs: `train/lr` (the first parameter group's learning rate, the one the step
used) and `train/grad_norm` (the total L2 norm of the gradients before clipping), once per optimizer step.

`StepScalars` logs them from Lightning's `on_before_optimizer_step` (automatic optimization: the SFT and contrastive
modules; gradients are complete and unscaled there, and Lightning clips after it). GRPO optimizes manually, so it
measures the norm itself before its own clipping and logs both with its step's other scalars.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from torch import Tensor
from torch.optim import Optimizer


def total_grad_norm(parameters: Iterable[Tensor]) -> Tensor | None:
    """The L2 norm of all gradients of `parameters` together (None when none has a gradient). Under FSDP2 the
    gradients are sharded DTensors: the norm is the whole model's, reduced over the ranks (call it on every rank).

    >>> a, b = torch.zeros(2, requires_grad=True), torch.zeros(1, requires_grad=True)
    >>> a.grad, b.grad = torch.tensor([3.0, 0.0]), torch.tensor([4.0])
    >>> float(total_grad_norm([a, b]))
    5.0
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
    full = getattr(norm, "full_tensor", None)  # a DTensor (FSDP2): the all-reduced value
    return (full() if callable(full) else norm).detach().float()


def first_lr(optimizer: Optimizer) -> float:
    """The learning rate of the optimizer's first parameter group (what a scheduler sets)."""
    return float(optimizer.param_groups[0]["lr"])


class StepScalars(L.LightningModule):
    """Mixin of the objectives: `train/lr` and `train/grad_norm` at every optimizer step (automatic optimization)."""

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        if not self.automatic_optimization:
            return  # manual optimization (GRPO) logs them itself, with the norm before its own clipping
        self.log("train/lr", first_lr(optimizer), on_step=True, on_epoch=False)
        norm = total_grad_norm(self.parameters())
        if norm is not None:
            self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
