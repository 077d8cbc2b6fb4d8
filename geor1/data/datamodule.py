"""`PairShardDataModule`: ground/satellite pair shards streamed to any objective."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from geor1 import Geor1Error
from geor1.data.reader import shard_urls
from geor1.data.schema import GROUND, SAT, PairSample, SampleError, decode_image_tensor, read_meta
from geor1.data.stream import Batch, ShardStream, StreamingDataModule, StreamItem, collate_stream

log = logging.getLogger(__name__)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def to_uint8_tensor(image, size: tuple[int, int]) -> torch.Tensor:
    """PIL -> [H, W, 3] uint8 resized to size=(H, W). Channels-first and normalising wait for the batch
    (`collate_tensors`, `normalise`): a quarter of the bytes between processes, one vectorised op per batch."""
    return torch.from_numpy(np.array(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.uint8))


class PairToTensors:
    """PairSample -> {"key", "ground": [Hg, Wg, 3] uint8, "sat": [S, S, 3] uint8, "lat", "lon", "meta"}; as a
    ShardStream `decode` (`decode_raw`), raw sample bytes straight to the same item, without PIL images between
    (`decode_image_tensor`: torchvision's JPEG decoder, reduced-size decoding for small targets)."""

    def __init__(self, ground_size: tuple[int, int], sat_size: int) -> None:
        self.ground_size: tuple[int, int] = (int(ground_size[0]), int(ground_size[1]))  # a YAML list works too
        self.sat_size = sat_size

    def __call__(self, s: PairSample) -> dict[str, Any]:
        if s.sat is None:
            raise SampleError(s.key, SAT, "missing (tensor items need ground/satellite pairs)")
        return {
            "key": s.key,
            "ground": to_uint8_tensor(s.ground, self.ground_size),
            "sat": to_uint8_tensor(s.sat, (self.sat_size, self.sat_size)),
            "lat": float(s.meta["lat"]),
            "lon": float(s.meta["lon"]),
            "meta": s.meta,
        }

    def decode_raw(self, raw: dict[str, Any]) -> dict[str, Any]:
        """A raw sample -> the item, or SampleError naming the key and field (the checks of `decode_pair`)."""
        key, meta = read_meta(raw)
        for name in (GROUND, SAT):
            if name not in raw:
                raise SampleError(
                    key, name, "missing" + (" (tensor items need ground/satellite pairs)" * (name == SAT))
                )
        ground = decode_image_tensor(key, GROUND, raw[GROUND], self.ground_size)
        sat = decode_image_tensor(key, SAT, raw[SAT], (self.sat_size, self.sat_size))
        return {
            "key": key,
            "ground": ground,
            "sat": sat,
            "lat": float(meta["lat"]),
            "lon": float(meta["lon"]),
            "meta": meta,
        }


def normalise(images: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] uint8 -> float32, ImageNet mean/std."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def collate_tensors(elements: list[StreamItem]) -> dict[str, Any]:
    """StreamItems of PairToTensors items -> one dict batch, stacked in the worker (two tensors cross the process
    boundary per batch, not two per sample): "ground" [B, 3, Hg, Wg] and "sat" [B, 3, S, S] uint8
    (channels-last; normalise on the device with `normalise`), "lat"/"lon" [B] float64, "key" and "meta" lists,
    "skipped" keys of corrupt samples and "skip_reasons" (why each was skipped)."""
    items = [e.item for e in elements if e.item is not None]
    out: dict[str, Any] = {
        "key": [b["key"] for b in items],
        "meta": [b["meta"] for b in items],
        "skipped": [k for e in elements for k in e.skipped],
        "skip_reasons": [r for e in elements for r in e.reasons],
    }
    if items:
        # [B, H, W, 3] viewed as [B, 3, H, W]: channels-last strides, no transposing copy (which costs more than
        # decoding these small JPEGs); `normalise` and convolutions take it as it is. Stacked by numpy: one
        # thread, where torch's parallel copy wakes its thread pool, whose spinning slows the decoding beside it.
        # In a DataLoader worker, straight into shared memory (as torch's default_collate), not copied there later
        in_worker = get_worker_info() is not None
        for name in ("ground", "sat"):
            arrays = [b[name].numpy() for b in items]
            batch = torch.empty((len(arrays), *arrays[0].shape), dtype=torch.uint8)
            if in_worker:
                batch.share_memory_()
            np.stack(arrays, out=batch.numpy())
            out[name] = batch.permute(0, 3, 1, 2)
        out["lat"] = torch.tensor([b["lat"] for b in items], dtype=torch.float64)
        out["lon"] = torch.tensor([b["lon"] for b in items], dtype=torch.float64)
    return out


class PairShardDataModule(StreamingDataModule):
    """Streams `<root>/<split>-*.tar` shards of ground/satellite pairs.

    Args:
        root: folder with the shards and `manifest.json` (e.g. from `geor1 data world`), or a WebDataset URL spec:
            a glob, a brace range (`data/gw/train-{000000..000009}.tar`), `pipe:` commands (`pipe:aws s3 cp
            s3://bucket/{split}-{000000..000099}.tar -`), `file:` or `http(s):` URLs, `::`-separated; `{split}`
            stands for the split name (see `geor1.data.reader.shard_urls`).
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

    def __init__(
        self,
        root: str = "data/geoworld",
        item: str = "pair",
        ground_size: tuple[int, int] = (128, 192),
        sat_size: int = 128,
        batch_size: int = 32,
        num_workers: int = 0,
        shuffle_buffer: int = 1000,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if item not in ("pair", "tensors"):
            raise Geor1Error(f"item must be 'pair' or 'tensors', got {item!r}")
        self.save_hyperparameters()
        # tensors: raw bytes decode straight to the item (no PIL pair between); pairs: decode_pair's PairSample
        self.decode = PairToTensors(ground_size, sat_size).decode_raw if item == "tensors" else None
        self.collate_fn = collate_tensors if item == "tensors" else collate_stream

    def has_split(self, split: str) -> bool:
        return bool(shard_urls(self.hparams["root"], split))  # Geor1Error for a root that names nothing

    def data_name(self) -> str:
        return str(self.hparams["root"])

    def stream(self, split: str, train: bool) -> ShardStream:
        hp = self.hparams
        shards = shard_urls(hp["root"], split)
        if not shards:
            raise Geor1Error(
                f"no shards for split '{split}' in {hp['root']} "
                f"(build GeoWorld with `geor1 data world --out {hp['root']}`, or name the split's shards "
                "`<split>-NNNNNN.tar` or put `{split}` in a URL spec)"
            )
        return ShardStream(
            shards,
            source=f"{hp['root']} (split '{split}', {hp['item']} items)",
            decode=self.decode,
            shuffle_buffer=hp["shuffle_buffer"] if train else 0,
            seed=hp["seed"],
            resampled=hp["resampled"] and train,
            samples_per_epoch=hp["samples_per_epoch"] if train else None,
        )

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move tensors, keep the Batch type (and its skipped keys, which Lightning's generic move would drop)."""
        if isinstance(batch, Batch):
            moved = super().transfer_batch_to_device(list(batch), device, dataloader_idx)
            return Batch(moved, batch.skipped, batch.reasons)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)
