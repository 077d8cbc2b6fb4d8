"""Run by tests/test_resume.py: an SFT fit that receives SIGTERM or SIGKILL after its 3rd step (checkpoints every 2
steps). Not a test module."""

from __future__ import annotations

import os
import signal
import sys

import lightning as L
import torch

import geor1  # noqa: F401
from geor1.data.chat import ChatShardDataModule
from geor1.model import TinyPolicy
from geor1.objectives.callbacks import CheckpointOnSigterm
from geor1.objectives.sft import SFTModule


class Preempt(L.Callback):
    def __init__(self, sig: int) -> None:
        self.sig = sig

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            os.kill(os.getpid(), self.sig)  # SIGTERM: a polite preemption; SIGKILL: a hard kill


def main(exemplars: str, out: str, sig: int) -> None:
    L.seed_everything(0)
    module = SFTModule(
        TinyPolicy(seed=0), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), max_length=512, num_val_generations=0
    )
    dm = ChatShardDataModule(exemplars, batch_size=3, shuffle_buffer=4, val_split="", seed=1)
    trainer = L.Trainer(
        max_steps=7,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            L.pytorch.callbacks.ModelCheckpoint(dirpath=out, every_n_train_steps=2, save_last=True),
            Preempt(sig),
            CheckpointOnSigterm(out),
        ],
        default_root_dir=out,
    )
    trainer.fit(module, datamodule=dm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], {"term": signal.SIGTERM, "kill": signal.SIGKILL}[sys.argv[3]])
