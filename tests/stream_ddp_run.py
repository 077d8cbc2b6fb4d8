"""Run by tests/test_stream_distributed.py: 2 gloo processes stream shards of unequal sizes, through a DDP fit
(training and validation, one collective per batch as sharded forwards have) and through a plain loop over the
DataModule under torch.distributed; each rank writes what it saw. Not a test module itself (pytest does not
collect it). Usage: stream_ddp_run.py ROOT OUT DEVICES"""

from __future__ import annotations

import json
import sys

import lightning as L
import numpy as np
import torch
from PIL import Image

import geor1  # noqa: F401
from geor1.data.datamodule import PairShardDataModule
from geor1.data.schema import encode_jpeg
from geor1.data.shards import ShardWriter, write_manifest

META = {"lat": 10.0, "lon": 20.0, "city": "X", "country": "FR", "source": "t"}


def write_pairs(root, splits: dict[str, int], max_count: int) -> None:
    """Per split, that many tiny pairs in shards of `max_count` (the last one shorter); keys <split>0000..."""
    rng = np.random.default_rng(0)
    stats = {}
    for split, n in splits.items():
        with ShardWriter(root, split, max_count=max_count) as w:
            for i in range(n):
                images = [
                    encode_jpeg(Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))) for _ in range(2)
                ]
                w.write(f"{split}{i:04d}", images[0], images[1], META)
        stats[split] = w.close()
    write_manifest(root, stats, "t", "CC0")


class KeyModule(L.LightningModule):
    """A linear layer; records the keys of every batch, and (like a sharded forward) runs one collective per batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)
        self.keys: list[list[str]] = []
        self.val_keys: list[list[str]] = []
        self.epochs: list[int] = []

    def training_step(self, batch, batch_idx):
        self.keys.append([s.key for s in batch])
        self.epochs.append(self.current_epoch)
        self.trainer.strategy.reduce(torch.ones(1), reduce_op="sum")
        return self.lin(torch.ones(1, 1)).sum() * len(batch)

    def validation_step(self, batch, batch_idx):
        self.val_keys.append([s.key for s in batch])
        self.trainer.strategy.reduce(torch.ones(1), reduce_op="sum")
        self.log("val/n", float(len(batch)), sync_dist=True, batch_size=len(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(root: str, out: str, devices: int) -> None:
    L.seed_everything(0)
    module = KeyModule()
    dm = PairShardDataModule(root, batch_size=2, shuffle_buffer=0, val_split="val")
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=-1,
    )
    trainer.fit(module, datamodule=dm)
    # a plain loop under torch.distributed (no trainer): the same agreement, through torch.distributed itself
    plain = PairShardDataModule(root, batch_size=2, shuffle_buffer=0, val_split="val")
    loop_keys = []
    for batch in plain.train_dataloader():
        loop_keys.append([s.key for s in batch])
        if torch.distributed.is_initialized():
            torch.distributed.all_reduce(torch.ones(1))  # a collective per batch: an extra batch would hang here
    with open(f"{out}.rank{trainer.global_rank}.json", "w") as f:
        json.dump(
            {
                "world": trainer.world_size,
                "keys": module.keys,
                "epochs": module.epochs,
                "val_keys": module.val_keys,
                "stats": dm.stream_stats,
                "loop_keys": loop_keys,
                "loop_stats": plain.stream_stats,
            },
            f,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
