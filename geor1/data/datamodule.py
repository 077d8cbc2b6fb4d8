"""`PairShardDataModule`: ground/satellite pair shards streamed to any objective."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geor1 import Geor1Error
from geor1.data.schema import PairSample
from geor1.data.shards import split_shards
from geor1.data.stream import Batch, ShardStream, StreamingDataModule, StreamItem, collate_stream

log = logging.getLogger(__name__)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def to_uint8_tensor(image, size: tuple[int, int]) -> torch.Tensor:
    """PIL -> [H, W, 3] uint8 resized to size=(H, W). Channels-first and normalising wait for the batch
    (`collate_tensors`, `normalise`): a quarter of the bytes between processes, one vectorised op per batch."""
    return torch.from_numpy(np.array(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.uint8))


class PairToTensors:
    """PairSample -> {"key", "ground": [Hg, Wg, 3] uint8, "sat": [S, S, 3] uint8, "lat", "lon", "meta"}."""

    def __init__(self, ground_size: tuple[int, int], sat_size: int) -> None:
        self.ground_size: tuple[int, int] = (int(ground_size[0]), int(ground_size[1]))  # a YAML list works too
        self.sat_size = sat_size

    def __call__(self, s: PairSample) -> dict[str, Any]:
        return {"key": s.key, "ground": to_uint8_tensor(s.ground, self.ground_size),
                "sat": to_uint8_tensor(s.sat, (self.sat_size, self.sat_size)), "lat": float(s.meta["lat"]),
                "lon": float(s.meta["lon"]), "meta": s.meta}


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] uint8 -> float32, ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def collate_tensors(elements: list[StreamItem]) -> dict[str, Any]:
    """StreamItems of PairToTensors items -> one dict batch, stacked in the worker (two tensors cross the process
    boundary per batch, not two per sample): "ground" [B, 3, Hg, Wg] and "sat" [B, 3, S, S] uint8 (normalise on
    the device with `normalise`), "lat"/"lon" [B] float64, "key" and "meta" lists, "skipped" keys of corrupt samples."""
    items = [e.item for e in elements if e.item is not None]
    out: dict[str, Any] = {"key": [b["key"] for b in items], "meta": [b["meta"] for b in items],
                           "skipped": [k for e in elements for k in e.skipped]}
    if items:
        out["ground"] = torch.stack([b["ground"] for b in items]).permute(0, 3, 1, 2).contiguous()  # [B, 3, H, W]
        out["sat"] = torch.stack([b["sat"] for b in items]).permute(0, 3, 1, 2).contiguous()
        out["lat"] = torch.tensor([b["lat"] for b in items], dtype=torch.float64)
        out["lon"] = torch.tensor([b["lon"] for b in items], dtype=torch.float64)
    return out


class PairShardDataModule(StreamingDataModule):
    """Streams `<root>/<split>-*.tar` shards of ground/satellite pairs.

    Args:
        root: folder with the shards and `manifest.json` (e.g. from `geor1 data world`).
        item: what a sample becomes: "pair" (batches are lists of PairSample with PIL images) or "tensors"
            (batches are dicts of stacked uint8 image tensors: see `collate_tensors`).
        ground_size: (H, W) of ground tensors for item="tensors".
        sat_size: side of satellite tensors for item="tensors".
        batch_size: samples per batch (per process).
        num_workers: DataLoader workers per process.
        shuffle_buffer: training shuffle buffer (samples); evaluation streams keep shard order.
        resampled: draw training shards with replacement (infinite stream; set samples_per_epoch).
        samples_per_epoch: training samples per epoch per reader (None: one pass).
        train_split: split names.
        val_split: validation split name ("" for none).
        test_split: test split name.
        seed: data order seed.
    """

    def __init__(self, root: str = "data/geoworld", item: str = "pair", ground_size: tuple[int, int] = (128, 192),
                 sat_size: int = 128, batch_size: int = 32, num_workers: int = 0, shuffle_buffer: int = 1000,
                 resampled: bool = False, samples_per_epoch: int | None = None, train_split: str = "train",
                 val_split: str = "val", test_split: str = "test", seed: int = 0) -> None:
        super().__init__()
        if item not in ("pair", "tensors"):
            raise Geor1Error(f"item must be 'pair' or 'tensors', got {item!r}")
        self.save_hyperparameters()
        self.to_item = PairToTensors(ground_size, sat_size) if item == "tensors" else None
        self.collate_fn = collate_tensors if item == "tensors" else collate_stream

    def stream(self, split: str, train: bool) -> ShardStream:
        hp = self.hparams
        shards = split_shards(hp["root"], split)
        if not shards:
            raise Geor1Error(f"no shards for split '{split}' in {Path(hp['root'])} "
                             f"(build GeoWorld with `geor1 data world --out {hp['root']}`)")
        return ShardStream(shards, self.to_item, shuffle_buffer=hp["shuffle_buffer"] if train else 0, seed=hp["seed"],
                           resampled=hp["resampled"] and train,
                           samples_per_epoch=hp["samples_per_epoch"] if train else None)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move tensors, keep the Batch type (and its skipped keys, which Lightning's generic move would drop)."""
        if isinstance(batch, Batch):
            return Batch(super().transfer_batch_to_device(list(batch), device, dataloader_idx), batch.skipped)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
