"""Run by tests/test_resume.py: an SFT fit that receives SIGTERM after its 3rd step (not a test module)."""

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
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)


def main(exemplars: str, out: str) -> None:
    L.seed_everything(0)
    module = SFTModule(TinyPolicy(seed=0), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), max_length=512,
                       num_val_generations=0)
    dm = ChatShardDataModule(exemplars, batch_size=3, shuffle_buffer=4, val_split="", seed=1)
    trainer = L.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Preempt(), CheckpointOnSigterm(out)],
                        default_root_dir=out)
    trainer.fit(module, datamodule=dm)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
