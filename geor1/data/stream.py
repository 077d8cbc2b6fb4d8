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

import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geor1 import Geor1Error
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

    def __init__(self, shards: Sequence[str | Path], to_item: Callable[[PairSample], Any] | None = None,
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
        raws = iter_raw_samples_lazy(shards)  # raw dicts
        decoded = self.stage_decode(raws, slot, stride)  # StreamItem(PairSample)
        stream = self.stage_shuffle(decoded, random.Random(epoch_seed * 31 + slot))
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


def agree_all(has_batch: bool) -> bool:
    """True when every rank has a batch: a MIN all_reduce over `torch.distributed` (on the current CUDA device under
    NCCL, on the CPU under gloo); `has_batch` itself with one process."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return has_batch
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(has_batch)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


@dataclass
class PassStats:
    """What one pass of a StreamLoader did on this rank: batches yielded (equal on every rank), and the samples this
    rank read but could not use because another rank's stream ended first (with their batches and corrupt keys)."""

    epoch: int
    skip: int = 0
    batches: int = 0
    unread_batches: int = 0
    unread_samples: int = 0
    unread_skipped: int = 0
    complete: bool = False


class StreamLoader(DataLoader):
    """A DataLoader that tells its ShardStream which pass (epoch) it starts, before workers copy the stream, and can
    resume a pass after its first `skip` batches (exact mid-epoch resume: the order is a function of (seed, epoch),
    so replaying and dropping the batches already trained on lands on the same next batch).

    Ranks read different shards, so they can hold different numbers of batches; a rank with an extra batch would
    wait forever in the next collective (DDP gradient all-reduce, FSDP all-gather, `sync_dist`). So before each
    batch every rank says whether it has one (`agree`, a collective: `agree_all` by default, or the trainer
    strategy's `reduce_boolean_decision`), and the pass ends for all when any rank has run out. The samples the
    longer ranks leave unread are counted (`stats`, `on_pass_end`) and logged as a warning, never dropped silently.
    The `skip` of a resumed pass is local and comes before the agreement: every rank trained (and so holds) at
    least `skip` batches of that pass. `ended()` true at an iteration's start: the consumer re-enters an epoch
    that already ended (Lightning's restore from an end-of-epoch checkpoint), which reads nothing and starts no pass.
    """

    dataset: ShardStream

    def __init__(self, dataset: ShardStream, start_pass: int = 0, skip: int = 0,
                 agree: Callable[[bool], bool] | None = None, on_pass_end: Callable[[PassStats], None] | None = None,
                 name: str = "stream", ended: Callable[[], bool] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("collate_fn", collate_stream)
        kwargs["persistent_workers"] = False  # workers must receive the new epoch each pass
        super().__init__(dataset, **kwargs)
        self.passes = start_pass
        self.skip = skip
        self.agree = agree or agree_all
        self.on_pass_end = on_pass_end
        self.name = name
        self.ended = ended
        self.stats: PassStats | None = None

    def __iter__(self):
        if self.ended is not None and self.ended():
            log.info("%s: the consumer re-enters a pass whose batches are all done; pass %d is kept for the next "
                     "iteration", self.name, self.passes)
            return iter(())
        self.dataset.set_epoch(self.passes)
        self.passes += 1
        it = super().__iter__()
        skip, self.skip = self.skip, 0
        if skip:
            log.info("resuming %s pass %d after its first %d batches", self.name, self.passes - 1, skip)
        return self._agreed(it, skip, PassStats(self.passes - 1, skip))

    def _agreed(self, it: Iterator[Any], skip: int, stats: PassStats) -> Iterator[Any]:
        """Batches of `it` after its first `skip`, as long as every rank has one."""
        self.stats = stats
        for _ in range(skip):  # local: every rank trained on these, so every rank holds them
            if next(it, None) is None:
                break
        while True:
            batch = next(it, None)
            if not self.agree(batch is not None):
                break
            stats.batches += 1
            yield batch
        if batch is not None:  # another rank ran out first: count what this one leaves unread (no collective here)
            if self.dataset.resampled and self.dataset.samples_per_epoch is None:  # never ends: nothing to count
                raise Geor1Error(f"{self.name} pass {stats.epoch}: another rank's endless resampled stream ended; "
                                 "set the same `resampled`/`samples_per_epoch` on every rank")
            for rest in itertools.chain([batch], it):
                stats.unread_batches += 1
                stats.unread_samples += _num_samples(rest)
                stats.unread_skipped += len(_skipped_keys(rest))
            log.warning("%s pass %d: %d samples (%d batches) left unread on this rank because another rank's shards "
                        "ended first (every rank stops after %d batches%s)", self.name, stats.epoch,
                        stats.unread_samples, stats.unread_batches, stats.batches,
                        f"; {stats.unread_skipped} corrupt keys among them" if stats.unread_skipped else "")
        stats.complete = True
        if self.on_pass_end is not None:
            self.on_pass_end(stats)


def _num_samples(batch: Any) -> int:
    """Samples in a collated batch: a Batch (list), or a dict batch with a "key" list (`collate_tensors`)."""
    if isinstance(batch, dict):
        return len(batch.get("key", []))
    return len(batch)


def _skipped_keys(batch: Any) -> list[str]:
    return (batch.get("skipped") if isinstance(batch, dict) else getattr(batch, "skipped", None)) or []


class StreamingDataModule(L.LightningDataModule):
    """What the shard DataModules share: loaders over `stream(split, train)`, and the training position (pass and
    batches done in it) saved in checkpoints, so `fit --ckpt_path` resumes mid-epoch exactly."""

    collate_fn: Any = staticmethod(collate_stream)

    def __init__(self) -> None:
        super().__init__()
        self._resume: dict[str, int] | None = None
        # per split: passes ended, batches yielded and samples left unread on this rank by the rank agreement
        self.stream_stats: dict[str, dict[str, int]] = {}
        self._train_loader: StreamLoader | None = None
        self._batches_before_pass = 0  # Lightning's in-epoch batch count when the training pass began

    def stream(self, split: str, train: bool) -> ShardStream:
        raise NotImplementedError

    def _agree(self, has_batch: bool) -> bool:
        """Every rank has a batch: through the trainer's strategy when attached (the collective on its device),
        else `agree_all` (plain torch.distributed, or one process)."""
        if self.trainer is not None and self.trainer.world_size > 1:
            return bool(self.trainer.strategy.reduce_boolean_decision(has_batch, all=True))
        return agree_all(has_batch)

    def _record_pass(self, split: str) -> Callable[[PassStats], None]:
        def record(stats: PassStats) -> None:
            totals = self.stream_stats.setdefault(split, {"passes": 0, "batches": 0, "unread_samples": 0})
            totals["passes"] += 1
            totals["batches"] += stats.batches
            totals["unread_samples"] += stats.unread_samples
        return record

    def _epoch_already_ended(self) -> bool:
        """At a training pass's start. Lightning 2.6.6, resumed from a checkpoint taken after an epoch's last batch
        (at its end hooks or after them), re-enters that epoch with the last batch done (`is_last_batch`, every
        batch processed) and ends it at once, moving its epoch counter on by one: that iteration must read nothing
        and start no pass (True). Otherwise notes Lightning's batch count, from which `state_dict` counts."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return False
        # Lightning annotates `current` with its base tracker class; these loops hold the processed-counting one
        epochs: Any = trainer.fit_loop.epoch_progress.current
        batches: Any = trainer.fit_loop.epoch_loop.batch_progress
        if (epochs.started == epochs.processed > 0 and batches.is_last_batch
                and 0 < batches.current.ready == batches.current.processed):
            return True
        self._batches_before_pass = int(batches.current.processed)
        return False

    def _loader(self, split: str, train: bool) -> StreamLoader:
        start, skip = 0, 0
        if train and self._resume is not None:
            start, skip = self._resume["epoch"], self._resume["batches_done"]
            self._resume = None
        elif train and self.trainer is not None:
            start = self.trainer.current_epoch
        loader = StreamLoader(self.stream(split, train), start_pass=start, skip=skip, agree=self._agree,
                              on_pass_end=self._record_pass(split), name=split,
                              ended=self._epoch_already_ended if train else None,
                              batch_size=self.hparams["batch_size"], num_workers=self.hparams["num_workers"],
                              collate_fn=self.collate_fn)
        if train:
            self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, int]:
        """The position of the next training batch: {"epoch": pass, "batches_done": batches of it to skip}.

        A checkpoint taken once the last batch of a pass is trained (at that batch's end, in the epoch-end hooks or
        after `fit`) points at the start of the next pass, as Lightning 2.6.6 itself resumes in a new epoch there.
        """
        if self.trainer is None:
            return {}
        if self._resume is not None:  # restored, not read yet
            return dict(self._resume)
        loader = self._train_loader
        if loader is None or loader.stats is None:  # no pass started yet
            return {"epoch": int(loader.passes if loader else self.trainer.current_epoch), "batches_done": 0}
        # the pass and its batch count are the loader's: Lightning's epoch counter runs one ahead after an
        # end-of-epoch restore, and it ends an epoch (and its batch count) at `max_steps` even mid-pass
        stats = loader.stats
        progress: Any = self.trainer.fit_loop.epoch_loop.batch_progress.current  # see _epoch_already_ended
        trained = progress.processed - self._batches_before_pass
        done = stats.skip + int(trained)  # batches of the pass trained on: skipped on resume, then trained
        if stats.complete and done >= stats.skip + stats.batches:  # its last batch is trained: the next pass
            return {"epoch": stats.epoch + 1, "batches_done": 0}
        return {"epoch": stats.epoch, "batches_done": done}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict:
            self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}

    def train_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams["train_split"], True)

    def val_dataloader(self) -> StreamLoader | list:
        return self._loader(self.hparams["val_split"], False) if self.hparams["val_split"] else []

    def test_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams["test_split"], False)

    def predict_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams["test_split"], False)
