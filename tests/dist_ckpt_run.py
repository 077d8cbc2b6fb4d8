"""Run by tests/test_dist_checkpoint.py: a GRPO fit of a tiny policy on 2 CPU processes (gloo) under Lightning's
`ModelParallelStrategy` (FSDP2, sharded in `configure_model`), distributed checkpoints every 2 steps, the trained
policy exported when fit ends. Each rank appends what it saw per step to `<out>/<tag>.rank<r>.jsonl`.
Not a test module itself (pytest does not collect it).

    python dist_ckpt_run.py EPISODES OUT TAG MAX_STEPS [--ckpt PATH] [--kill-at STEP]

--kill-at S: both ranks SIGKILL themselves when step S+1 starts (checkpoints up to step S are on disk).
"""

from __future__ import annotations

import argparse
import json
import os
import signal

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

import geor1  # noqa: F401  (offline mode)
from geor1.data.chat import ChatShardDataModule
from geor1.model import TinyPolicy
from geor1.objectives.grpo import GRPOModule
from geor1.objectives.grpo_settings import LossSettings, RolloutSettings


class Record(L.Callback):
    """Per step and rank: the batch keys, the sampled completions and the loss."""

    def __init__(self, path: str, kill_at: int | None) -> None:
        self.path, self.kill_at = path, kill_at
        self.texts: list[str] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.kill_at is not None and trainer.global_step == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # every rank: a hard kill, no checkpoint on the way out

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        row = {
            "step": trainer.global_step,
            "keys": [s.key for s in batch],
            "texts": self.texts,
            "loss": float(trainer.callback_metrics["train/loss"]),
            "world": trainer.world_size,
        }
        with open(f"{self.path}.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("episodes")
    ap.add_argument("out")
    ap.add_argument("tag")
    ap.add_argument("max_steps", type=int)
    ap.add_argument("--ckpt")
    ap.add_argument("--kill-at", type=int)
    ap.add_argument("--devices", type=int, default=2)
    args = ap.parse_args()
    L.seed_everything(0)
    record = Record(os.path.join(args.out, args.tag), args.kill_at)
    module = GRPOModule(
        TinyPolicy(seed=0, hidden_size=64),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2),
        rollout=RolloutSettings(group_size=2, max_new_tokens=6),
        loss=LossSettings(beta=0.04),
        log_completions_every_n_steps=0,
        rewards={"accuracy": 1.0, "format": 1.0, "repetition": 1.0},
        export_dir=os.path.join(args.out, f"{args.tag}_export"),
    )
    original = module.policy.generate

    def generate(*a, **kw):
        rollout = original(*a, **kw)
        record.texts = list(rollout.texts)
        return rollout

    module.policy.generate = generate
    dm = ChatShardDataModule(args.episodes, task="pairing", batch_size=2, shuffle_buffer=4, val_split="", seed=1)
    strategy = ModelParallelStrategy(
        data_parallel_size=args.devices, tensor_parallel_size=1, process_group_backend="gloo"
    )
    trainer = L.Trainer(
        max_steps=args.max_steps,
        accelerator="cpu",
        devices=args.devices,
        strategy=strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=args.out,
        callbacks=[
            record,
            L.pytorch.callbacks.ModelCheckpoint(
                dirpath=os.path.join(args.out, "ckpt"), every_n_train_steps=2, save_top_k=-1
            ),
        ],
    )
    trainer.fit(module, datamodule=dm, ckpt_path=args.ckpt)


if __name__ == "__main__":
    main()
