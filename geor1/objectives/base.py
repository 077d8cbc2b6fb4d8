"""`PolicyModule`: what every VLM objective shares — the Policy, the optimizer and scheduler from the config,
and export of the trained policy to a plain Hugging Face folder."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from geor1.model.policy import Policy

log = logging.getLogger(__name__)


class PolicyModule(L.LightningModule):
    """Base of the SFT and GRPO modules.

    Args:
        policy: the model to train (`geor1.model.Policy` from a local folder, or `geor1.model.TinyPolicy`).
        optimizer: optimizer over the trainable parameters (`class_path: torch.optim.AdamW` + `init_args`).
        scheduler: optional learning-rate scheduler, stepped every optimizer step.
        export_dir: if set, the trained policy is written there as a Hugging Face folder when `fit` ends.
    """

    def __init__(
        self,
        policy: Policy,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        export_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.export_dir = export_dir

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters (frozen everything?)")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        if self.export_dir and self.trainer.is_global_zero:
            out = self.policy.save_pretrained(Path(self.export_dir))
            log.info("trained policy exported to %s", out)
