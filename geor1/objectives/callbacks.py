"""Training callbacks shared by the objectives."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnSigterm(L.Callback):
    """Saves `<dirpath>/sigterm.ckpt` when the run receives SIGTERM (a preempted job): Lightning stops after the
    batch in progress, and `fit --ckpt_path <dirpath>/sigterm.ckpt` resumes exactly there.

    Args:
        dirpath: folder for the checkpoint (default: `<trainer.default_root_dir>/checkpoints`).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        self.dirpath = dirpath

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        folder = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints")
        path = folder / "sigterm.ckpt"
        trainer.save_checkpoint(path)
        log.warning(
            "SIGTERM: checkpoint saved to %s at step %d; resume with --ckpt_path %s", path, trainer.global_step, path
        )
