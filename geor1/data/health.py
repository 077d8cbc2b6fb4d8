"""`DataHealth`: logs how many corrupt samples the streams skipped (`data/skipped`, cumulative) and names them."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L

log = logging.getLogger(__name__)


class DataHealth(L.Callback):
    """Add to `trainer.callbacks` (the recipes in configs/ do): reads `Batch.skipped` of every training batch.

    Args:
        max_logged_keys: how many skipped keys are named in the log (all are counted).
    """

    def __init__(self, max_logged_keys: int = 100) -> None:
        self.max_logged_keys = max_logged_keys
        self.skipped_keys: list[str] = []
        self.total = 0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        keys = (batch.get("skipped") if isinstance(batch, dict) else getattr(batch, "skipped", None)) or []
        if keys:
            self.total += len(keys)
            if len(self.skipped_keys) < self.max_logged_keys:
                self.skipped_keys += keys[: self.max_logged_keys - len(self.skipped_keys)]
            log.warning("skipped %d corrupt samples (total %d): %s", len(keys), self.total, ", ".join(keys[:10]))
        pl_module.log("data/skipped", float(self.total), on_step=True, on_epoch=False, reduce_fx="sum", batch_size=1)

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "skipped_keys": self.skipped_keys}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total = state_dict["total"]
        self.skipped_keys = list(state_dict["skipped_keys"])
