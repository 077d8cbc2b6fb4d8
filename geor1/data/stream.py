"""Streaming shards: a flat list of named stages, each a generator over the previous one.

    shards   -> the shard paths this process reads (split by node and worker; resampled with replacement if asked)
    read     -> raw samples {"__key__", ext: bytes}            (a truncated shard: warning naming it, rest skipped)
    decode   -> PairSample                                      (a corrupt sample: skipped, counted, key kept)
    shuffle  -> PairSample, through a seeded buffer
    to_item  -> what the objective consumes (PairSample, tensors, ChatSample)     <- the sample's shape changes here

When there are fewer shards than readers (nodes x workers), every reader walks all shards and keeps every n-th
sample instead, so no reader is idle and no sample is read twice. Skipped keys travel with the next sample a worker
yields (or with an empty marker at the end of its stream), so the totals logged as `data/skipped` are exact with
any number of workers.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geor1.data.reader import iter_raw_samples
from geor1.data.schema import PairSample, SampleError, decode_pair

log = logging.getLogger(__name__)


@dataclass
class StreamItem:
    """One yielded element: `item` (None for an end-of-stream marker) and the keys skipped just before it."""

    item: Any
    skipped: list[str] = field(default_factory=list)


class Batch(list):
    """A batch of items (a plain list) that also carries the keys of corrupt samples skipped while it was read."""

    skipped: list[str]

    def __init__(self, items=(), skipped: list[str] | None = None) -> None:
        super().__init__(items)
        self.skipped = skipped or []


def collate_stream(elements: list[StreamItem]) -> Batch:
    skipped = [k for e in elements for k in e.skipped]
    return Batch([e.item for e in elements if e.item is not None], skipped)


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardStream(IterableDataset):
    """An iterable over the samples of some shards.

    Args:
        shards: shard paths.
        to_item: PairSample -> item (identity by default).
        shuffle_buffer: samples held for shuffling (0: stream order, for evaluation).
        seed: base seed; each epoch's order derives from it (and from the DataLoader's per-epoch worker seed).
        resampled: draw shards with replacement forever (use with `samples_per_epoch`).
        samples_per_epoch: stop each epoch after this many items per reader (None: one pass over the shards).
        require_sat: a sample without `sat.jpg` is corrupt (pair data) or allowed (ground-only benchmarks).
        decode: raw sample -> decoded sample, raising SampleError when corrupt (default: `decode_pair`).
    """

    def __init__(self, shards: list[str | Path], to_item: Callable[[PairSample], Any] | None = None,
                 shuffle_buffer: int = 0, seed: int = 0, resampled: bool = False,
                 samples_per_epoch: int | None = None, require_sat: bool = True,
                 decode: Callable[[dict], Any] | None = None) -> None:
        super().__init__()
        if not shards:
            raise ValueError("ShardStream needs at least one shard")
        self.shards = [str(s) for s in shards]
        self.to_item = to_item or (lambda s: s)
        self.shuffle_buffer, self.seed, self.resampled = shuffle_buffer, seed, resampled
        self.samples_per_epoch, self.require_sat = samples_per_epoch, require_sat
        self.decode = decode
        self.epoch = 0

    # ---- stages -------------------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Called by StreamLoader before each pass: the order of a pass depends on (seed, epoch) only, so every
        rank and worker agrees on it without sharing state."""
        self.epoch = epoch

    def _reader_slot(self) -> tuple[int, int, int]:
        """(this reader's index, number of readers, epoch seed)."""
        rank, world = _rank_and_world()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return rank * workers + worker, world * workers, self.seed * 1_000_003 + self.epoch

    def stage_shards(self, slot: int, readers: int, rng: random.Random) -> tuple[Iterator[str], int]:
        """-> (shard paths for this reader, sample stride: 1, or `readers` when shards are fewer than readers)."""
        if self.resampled:
            return (rng.choice(self.shards) for _ in iter(int, 1)), 1
        order = list(self.shards)
        if self.shuffle_buffer:
            rng.shuffle(order)  # the same order in every reader of this epoch: the split below is a partition
        if len(order) >= readers:
            return iter(order[slot::readers]), 1
        return iter(order), readers

    def stage_decode(self, raws: Iterator[dict], slot: int, stride: int) -> Iterator[StreamItem]:
        pending: list[str] = []
        for i, raw in enumerate(raws):
            if stride > 1 and i % stride != slot:
                continue
            try:
                sample = self.decode(raw) if self.decode else decode_pair(raw, require_sat=self.require_sat)
            except SampleError as e:
                log.warning("skipping corrupt sample in %s: %s", raw.get("__url__"), e)
                pending.append(e.key)
                continue
            yield StreamItem(sample, pending)
            pending = []
        if pending:
            yield StreamItem(None, pending)

    def stage_shuffle(self, items: Iterator[StreamItem], rng: random.Random) -> Iterator[StreamItem]:
        if self.shuffle_buffer <= 1:
            yield from items
            return
        buf: list[StreamItem] = []
        for it in items:
            buf.append(it)
            if len(buf) >= self.shuffle_buffer:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    # ---- the pipeline -------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamItem]:
        slot, readers, epoch_seed = self._reader_slot()
        shards, stride = self.stage_shards(slot, readers, random.Random(epoch_seed))
        stream = iter_raw_samples_lazy(shards)  # raw dicts
        stream = self.stage_decode(stream, slot, stride)  # StreamItem(PairSample)
        stream = self.stage_shuffle(stream, random.Random(epoch_seed * 31 + slot))
        count = 0
        for element in stream:
            if element.item is not None:
                element.item = self.to_item(element.item)  # PairSample -> the objective's item
                count += 1
            yield element
            if self.samples_per_epoch is not None and count >= self.samples_per_epoch:
                return


def iter_raw_samples_lazy(shards: Iterator[str]) -> Iterator[dict]:
    for shard in shards:
        yield from iter_raw_samples([shard])


class StreamLoader(DataLoader):
    """A DataLoader that tells its ShardStream which pass (epoch) it starts, before workers copy the stream, and can
    resume a pass after its first `skip` batches (exact mid-epoch resume: the order is a function of (seed, epoch),
    so replaying and dropping the batches already trained on lands on the same next batch)."""

    def __init__(self, dataset: ShardStream, start_pass: int = 0, skip: int = 0, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate_stream)
        kwargs["persistent_workers"] = False  # workers must receive the new epoch each pass
        super().__init__(dataset, **kwargs)
        self.passes = start_pass
        self.skip = skip

    def __iter__(self):
        self.dataset.set_epoch(self.passes)
        self.passes += 1
        it = super().__iter__()
        skip, self.skip = self.skip, 0
        if skip:
            log.info("resuming pass %d after its first %d batches", self.passes - 1, skip)
            return _skipping(it, skip)
        return it


def _skipping(it, n: int):
    for i, batch in enumerate(it):
        if i >= n:
            yield batch


class StreamingDataModule(L.LightningDataModule):
    """What the shard DataModules share: loaders over `stream(split, train)`, and the training position (pass and
    batches done in it) saved in checkpoints, so `fit --ckpt_path` resumes mid-epoch exactly."""

    collate_fn: Any = staticmethod(collate_stream)

    def __init__(self) -> None:
        super().__init__()
        self._resume: dict[str, int] | None = None

    def stream(self, split: str, train: bool) -> ShardStream:
        raise NotImplementedError

    def _loader(self, split: str, train: bool) -> StreamLoader:
        start, skip = 0, 0
        if train and self._resume is not None:
            start, skip = self._resume["epoch"], self._resume["batches_done"]
            self._resume = None
        elif train and self.trainer is not None:
            start = self.trainer.current_epoch
        return StreamLoader(self.stream(split, train), start_pass=start, skip=skip,
                            batch_size=self.hparams.batch_size, num_workers=self.hparams.num_workers,
                            collate_fn=self.collate_fn)

    def state_dict(self) -> dict[str, int]:
        if self.trainer is None:
            return {}
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(self.trainer.current_epoch), "batches_done": int(progress.processed)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}

    def train_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams.train_split, True)

    def val_dataloader(self) -> StreamLoader | list:
        return self._loader(self.hparams.val_split, False) if self.hparams.val_split else []

    def test_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams.test_split, False)

    def predict_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams.test_split, False)
