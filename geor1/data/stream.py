"""Streaming shards through webdataset's pipeline: a `wds.DataPipeline` of small named stages, each a generator
over the previous one's output.

    shards    {"url"}: webdataset's SimpleShardList in a (seed, epoch) order, or its ResampledShards (with replacement)
    split     this reader's shards: by node (rank), then by worker, as webdataset's split_by_node/split_by_worker
    open      {"url", "stream"} through webdataset.gopen (`geor1.data.reader.open_shards`)
    expand    raw samples {"__key__", "__url__", ext: bytes}, grouped by webdataset's group_by_keys; a truncated shard
              is warned about by name and its incomplete sample never yielded (`geor1.data.reader.tar_samples`)
    stride    when there are fewer shards than readers, every reader walks all shards and keeps every n-th sample
    exclude   raw samples whose key is in `exclude` are dropped unread (evaluation resumed by key)
    shuffle   webdataset's shuffle buffer over raw samples, seeded by (seed, epoch, reader)
    decode    StreamItem(PairSample, or the `decode` callable's item)     (a corrupt sample: skipped, counted, key kept)
    to_item   StreamItem(what the objective consumes: PairSample, tensors, ChatSample)
    limit     `samples_per_epoch` items per reader
    group     evaluation: items sorted by prompt size within windows of `group_window` (batches of like lengths)

With the stride, no reader is idle and no sample is read twice. Skipped keys travel with the next sample a worker
yields (or with an empty marker at the end of its stream), so the totals logged as `data/skipped` are exact with any
number of workers. The order of a pass is a function of (seed, epoch) alone: replaying a pass and dropping the
batches already trained on resumes it exactly (`StreamLoader`).

Every run ends: a pass of a `StreamLoader` in which some rank had no usable sample (every sample skipped as corrupt
or of another task, or none read at all) trains no step, and would start the next pass, and the next, forever; it is
a Geor1Error naming the data (`ShardStream.source`: roots, split, task) and the most common reason samples were
skipped. A resampled stream never ends a pass by itself: there, a reader whose first ALL_CORRUPT_LIMIT samples are all
unusable raises the same error.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from geor1 import Geor1Error
from geor1.data.reader import open_shards, tar_samples
from geor1.data.schema import PairSample, SampleError, decode_pair

log = logging.getLogger(__name__)


@dataclass
class StreamItem:
    """One yielded element: `item` (None for an end-of-stream marker), the keys skipped just before it and why
    (`reasons`: "field 'x': what is wrong", one per skipped key; a stream that knows no reason leaves it empty)."""

    item: Any
    skipped: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)


class Batch(list):
    """A batch of items (a plain list) that also carries the keys of corrupt samples skipped while it was read, and
    the reason each was skipped."""

    skipped: list[str]
    reasons: list[str]

    def __init__(self, items=(), skipped: list[str] | None = None, reasons: list[str] | None = None) -> None:
        super().__init__(items)
        self.skipped = skipped or []
        self.reasons = reasons or []


def collate_stream(elements: list[StreamItem]) -> Batch:
    skipped = [k for e in elements for k in e.skipped]
    reasons = [r for e in elements for r in e.reasons]
    return Batch([e.item for e in elements if e.item is not None], skipped, reasons)


def skip_reason(error: SampleError) -> str:
    """What is wrong with a skipped sample, without its key: samples skipped for one cause share one reason."""
    return f"field '{error.field}': {error.reason}"


def reasons_text(reasons: Counter, skipped: int) -> str:
    """'the most common reason (n of N): ...; also: ...' for an error message."""
    if not reasons:
        return "no reason recorded (see the warnings above)"
    (first, n), *rest = reasons.most_common(3)
    text = f"the most common reason ({n} of {skipped}): {first}"
    if rest:
        text += "; also: " + "; ".join(f"{r} ({c})" for r, c in rest)
    return text


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@dataclass
class ReaderSlot:
    """Where this reader sits: `rank` of `world` processes, `worker` of `workers` DataLoader workers, and the seed of
    this pass (a function of the stream's seed and epoch only, so every reader agrees on it without sharing state)."""

    rank: int
    world: int
    worker: int
    workers: int
    epoch_seed: int

    @property
    def index(self) -> int:
        return self.rank * self.workers + self.worker

    @property
    def readers(self) -> int:
        return self.world * self.workers


EVAL_GROUP_BATCHES = 16  # evaluation batches prompts of like sizes within windows of this many batches
ALL_CORRUPT_LIMIT = 1000  # a resampled stream whose first this many samples are all corrupt is an error


class ShardStream(IterableDataset):
    """An iterable over the samples of some shards (paths or WebDataset URLs), through `wds.DataPipeline`.

    Args:
        shards: shard paths or URLs (`geor1.data.reader.shard_urls` expands specs into these).
        to_item: PairSample -> item (identity by default).
        shuffle_buffer: samples held for shuffling (0: stream order, for evaluation).
        seed: base seed; each epoch's order derives from it and the epoch.
        resampled: draw shards with replacement forever (use with `samples_per_epoch`).
        samples_per_epoch: stop each epoch after this many items per reader (None: one pass over the shards).
        require_sat: a sample without `sat.jpg` is corrupt (pair data) or allowed (ground-only benchmarks).
        decode: raw sample -> decoded sample, raising SampleError when corrupt (default: `decode_pair`).
        passes: a curriculum: the shards of pass 0, 1, ... (the last list holds for every later pass); `shards`
            is then the shards of pass 0 and is ignored otherwise. A pass's order still depends on (seed, pass)
            only, so a resumed run reads what an uninterrupted one would.
        exclude: keys not to read (an evaluation resumed by key skips what it has written).
        group_window: > 1 sorts the items within windows of this many by `item_size` (evaluation: batches of
            prompts of like lengths, less padding); the order within a window then follows the size, not the shard.
        source: what these shards are, for errors (e.g. "roots data/sft (split 'train', task 'pairing')");
            default: the number of shards and the first one.
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        to_item: Callable[[PairSample], Any] | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        resampled: bool = False,
        samples_per_epoch: int | None = None,
        require_sat: bool = True,
        decode: Callable[[dict], Any] | None = None,
        passes: Sequence[Sequence[str | Path]] | None = None,
        exclude: frozenset[str] | None = None,
        group_window: int = 0,
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.exclude = exclude or frozenset()
        self.group_window = group_window
        self.passes = [[str(s) for s in shard_list] for shard_list in passes] if passes else None
        if self.passes is not None:
            shards = self.passes[0]
        if not shards or (self.passes is not None and not all(self.passes)):
            raise ValueError("ShardStream needs at least one shard (in every pass of a curriculum)")
        self.shards = [str(s) for s in shards]
        self._source = source
        self.to_item = to_item
        self.shuffle_buffer, self.seed, self.resampled = shuffle_buffer, seed, resampled
        self.samples_per_epoch, self.require_sat = samples_per_epoch, require_sat
        self.decode = decode
        self.epoch = 0
        self.rank_world: tuple[int, int] | None = None  # taken in the main process by `set_epoch`

    @property
    def source(self) -> str:
        """What this stream reads, for error messages."""
        if self._source:
            return self._source
        more = f" and {len(self.shards) - 1} more" if len(self.shards) > 1 else ""
        return f"shard {self.shards[0]}{more}"

    def set_epoch(self, epoch: int) -> None:
        """Called by StreamLoader before each pass: the order of a pass depends on (seed, epoch) only, so every
        rank and worker agrees on it without sharing state. Also notes the rank and world size here, in the main
        process: DataLoader workers started by spawn or forkserver hold no process group, and would read as rank 0
        of 1 (every rank then reading every shard)."""
        self.epoch = epoch
        self.rank_world = _rank_and_world()
        if self.passes is not None:
            self.shards = self.passes[min(epoch, len(self.passes) - 1)]

    def _reader_slot(self) -> ReaderSlot:
        rank, world = self.rank_world or _rank_and_world()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return ReaderSlot(rank, world, worker, workers, self.seed * 1_000_003 + self.epoch)

    # ---- stages (each: an iterable in, a generator out) -----------------------------------------------------
    def stage_shards(self, slot: ReaderSlot) -> IterableDataset:
        """{"url"} per shard: webdataset's ResampledShards (every reader draws from all shards, with its own seed),
        or its SimpleShardList in the order of this pass (the same in every reader: the split is a partition)."""
        if self.resampled:
            return wds.ResampledShards(
                self.shards, seed=slot.epoch_seed, worker_seed=lambda: slot.index, deterministic=True
            )
        order = list(self.shards)
        if self.shuffle_buffer:
            random.Random(slot.epoch_seed).shuffle(order)
        return wds.SimpleShardList(order)

    def _stride(self, slot: ReaderSlot) -> int:
        """1, or the number of readers when shards are fewer than readers (each then keeps every n-th sample)."""
        return 1 if self.resampled or len(self.shards) >= slot.readers else slot.readers

    def stage_split(self, shards: Iterable[dict], slot: ReaderSlot) -> Iterator[dict]:
        """This reader's shards: webdataset's split_by_node then split_by_worker (islice by rank, then by worker),
        with the rank from `_rank_and_world` (the strategy's process group); all shards when they are too few."""
        if self._stride(slot) > 1 or self.resampled:
            yield from shards
            return
        by_node = itertools.islice(shards, slot.rank, None, slot.world)
        yield from itertools.islice(by_node, slot.worker, None, slot.workers)

    def stage_stride(self, raws: Iterable[dict], slot: ReaderSlot) -> Iterator[dict]:
        """Fewer shards than readers: every reader walks all of them and keeps samples i with i % readers == index."""
        stride = self._stride(slot)
        if stride == 1:
            yield from raws
            return
        yield from itertools.islice(raws, slot.index, None, stride)

    def stage_exclude(self, raws: Iterable[dict]) -> Iterator[dict]:
        """Raw samples whose key is not in `exclude` (before decoding: a done sample costs no image decode)."""
        if not self.exclude:
            yield from raws
            return
        yield from (raw for raw in raws if raw.get("__key__") not in self.exclude)

    def stage_decode(self, raws: Iterable[dict]) -> Iterator[StreamItem]:
        """raw sample -> StreamItem(decoded sample); corrupt ones are logged, and their keys and reasons ride on the
        next item. A resampled stream (which never ends by itself) whose first ALL_CORRUPT_LIMIT samples are all
        corrupt is an error naming the data and the most common reason: the wrong data for this reader, not a few
        bad samples."""
        decode = self.decode or (lambda raw: decode_pair(raw, require_sat=self.require_sat))
        pending: list[str] = []
        reasons: list[str] = []
        decoded = False
        for raw in raws:
            try:
                sample = decode(raw)
            except SampleError as e:
                log.warning("skipping corrupt sample in %s: %s", raw.get("__url__"), e)
                pending.append(e.key)
                reasons.append(skip_reason(e))
                if self.resampled and not decoded and len(pending) >= ALL_CORRUPT_LIMIT:
                    raise Geor1Error(
                        f"no usable sample in {self.source}: the first {len(pending)} samples drawn (e.g. from "
                        f"{raw.get('__url__')}) were all skipped; {reasons_text(Counter(reasons), len(pending))}. "
                        "Is this the data this task expects? (`geor1 data inspect` shows what the shards hold)"
                    ) from None
                continue
            decoded = True
            yield StreamItem(sample, pending, reasons)
            pending, reasons = [], []
        if pending:
            yield StreamItem(None, pending, reasons)

    def stage_shuffle(self, items: Iterable[dict], slot: ReaderSlot) -> Iterator[dict]:
        """webdataset's shuffle buffer over raw samples (before decoding: the buffer holds bytes, not images), with a
        generator seeded by (seed, epoch, reader)."""
        if self.shuffle_buffer <= 1:
            yield from items
            return
        rng = random.Random(slot.epoch_seed * 31 + slot.index)
        yield from wds.filters._shuffle(iter(items), self.shuffle_buffer, self.shuffle_buffer, rng=rng)

    def stage_to_item(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        to_item = self.to_item
        for element in items:
            if to_item is not None and element.item is not None:
                element.item = to_item(element.item)
            yield element

    def stage_limit(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        """At most `samples_per_epoch` items (end-of-stream markers do not count)."""
        if self.samples_per_epoch is None:
            yield from items
            return
        count = 0
        for element in items:
            yield element
            count += element.item is not None
            if count >= self.samples_per_epoch:
                return

    def stage_group(self, items: Iterable[StreamItem]) -> Iterator[StreamItem]:
        """Items sorted by `item_size` within windows of `group_window` (stable; markers keep their place in the
        window's tail, so no skipped key is lost)."""
        if self.group_window <= 1:
            yield from items
            return
        for window in _windows(items, self.group_window):
            real = sorted((e for e in window if e.item is not None), key=lambda e: item_size(e.item))
            markers = [e for e in window if e.item is None]
            yield from real
            yield from markers

    # ---- the pipeline -------------------------------------------------------------------------------------
    def pipeline(self) -> wds.DataPipeline:
        """This reader's pipeline for the current epoch (built in the process that iterates it)."""
        slot = self._reader_slot()
        return wds.DataPipeline(
            self.stage_shards(slot),  # {"url"}
            lambda src: self.stage_split(src, slot),  # {"url"}: this reader's
            open_shards,  # {"url", "stream"}
            tar_samples,  # raw samples {"__key__", "__url__", ext: bytes}   <- shards become samples
            lambda src: self.stage_stride(src, slot),
            self.stage_exclude,
            lambda src: self.stage_shuffle(src, slot),  # raw samples: a few kB each in the buffer, not images
            self.stage_decode,  # StreamItem(PairSample | decoded sample)     <- raw bytes become samples
            self.stage_to_item,  # StreamItem(the objective's item)           <- the sample's shape changes here
            self.stage_limit,
            self.stage_group,  # StreamItem(the same items, like prompt sizes next to each other)
        )

    def __iter__(self) -> Iterator[StreamItem]:
        return iter(self.pipeline())


def _windows(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while window := list(itertools.islice(it, size)):
        yield window


def item_size(item: Any) -> tuple[int, int]:
    """The size of a chat item's prompt, for grouping: (image pixels, characters of text); (0, 0) for other items.
    Prompts of equal size tokenise to equal lengths with the Qwen-VL processors (image tokens follow the pixels)."""
    prompt = getattr(item, "prompt", None)
    if prompt is None:
        return (0, 0)
    pixels = sum(getattr(im, "width", 0) * getattr(im, "height", 0) for im in prompt.images)
    return (pixels, len(prompt.text))


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
    """What one pass of a StreamLoader did on this rank: batches yielded (equal on every rank), the usable samples
    read (`samples`, those of the batches a resume skips included) and the skipped ones with their reasons, and the
    samples this rank read but could not use because another rank's stream ended first (with their batches and
    corrupt keys)."""

    epoch: int
    skip: int = 0
    batches: int = 0
    samples: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)
    unread_batches: int = 0
    unread_samples: int = 0
    unread_skipped: int = 0
    complete: bool = False

    def count(self, batch: Any) -> None:
        """Add a batch's usable samples and skipped keys (with their reasons)."""
        self.samples += _num_samples(batch)
        self.skipped += len(_skipped_keys(batch))
        self.reasons.update(_skip_reasons(batch))


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

    A pass that ends with a rank holding no usable sample is a Geor1Error on every rank (one more agreement, at the
    pass's end): no step of it could be trained, so a run over it would never end (see the module docstring). An
    evaluation pass (`until_all_done`) is an error when no rank had a usable sample and some sample was skipped
    (or, with nothing excluded, none was read at all).
    """

    dataset: ShardStream

    def __init__(
        self,
        dataset: ShardStream,
        start_pass: int = 0,
        skip: int = 0,
        agree: Callable[[bool], bool] | None = None,
        on_pass_end: Callable[[PassStats], None] | None = None,
        name: str = "stream",
        ended: Callable[[], bool] | None = None,
        until_all_done: Callable[[bool], bool] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("collate_fn", collate_stream)
        kwargs["persistent_workers"] = False  # workers must receive the new epoch each pass
        super().__init__(dataset, **kwargs)
        self.passes = start_pass
        self.skip = skip
        self.agree = agree or agree_all
        self.on_pass_end = on_pass_end
        self.name = name
        self.ended = ended
        self.until_all_done = until_all_done
        self.stats: PassStats | None = None

    def __iter__(self):
        if self.ended is not None and self.ended():
            log.info(
                "%s: the consumer re-enters a pass whose batches are all done; pass %d is kept for the next iteration",
                self.name,
                self.passes,
            )
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
            done = next(it, None)
            if done is None:
                break
            stats.count(done)
        if self.until_all_done is not None:
            yield from self._padded(it, self.until_all_done, stats)
            return
        while True:
            batch = next(it, None)
            if not self.agree(batch is not None):
                break
            stats.batches += 1
            stats.count(batch)
            yield batch
        if batch is not None:  # another rank ran out first: count what this one leaves unread (no collective here)
            if self.dataset.resampled and self.dataset.samples_per_epoch is None:  # never ends: nothing to count
                raise Geor1Error(
                    f"{self.name} pass {stats.epoch}: another rank's endless resampled stream ended; "
                    "set the same `resampled`/`samples_per_epoch` on every rank"
                )
            for rest in itertools.chain([batch], it):
                stats.unread_batches += 1
                stats.unread_samples += _num_samples(rest)
                stats.unread_skipped += len(_skipped_keys(rest))
                stats.reasons.update(_skip_reasons(rest))
            log.warning(
                "%s pass %d: %d samples (%d batches) left unread on this rank because another rank's shards "
                "ended first (every rank stops after %d batches%s)",
                self.name,
                stats.epoch,
                stats.unread_samples,
                stats.unread_batches,
                stats.batches,
                f"; {stats.unread_skipped} corrupt keys among them" if stats.unread_skipped else "",
            )
        if not self.agree(stats.samples > 0):  # a collective: every rank ends the pass here
            raise self._empty_pass(stats)
        stats.complete = True
        if self.on_pass_end is not None:
            self.on_pass_end(stats)

    def _empty_pass(self, stats: PassStats) -> Geor1Error:
        """The error of a pass in which some rank had no usable sample."""
        source = getattr(self.dataset, "source", None) or type(self.dataset).__name__
        rank, world = _rank_and_world()
        where = f" on rank {rank} of {world}" if world > 1 else ""
        usable, skipped = stats.samples + stats.unread_samples, stats.skipped + stats.unread_skipped
        if skipped and not usable:
            what = f"all {skipped} samples read{where} were skipped; {reasons_text(stats.reasons, skipped)}"
        elif not usable:
            what = (
                f"no sample was read{where} (empty or unreadable shards, or fewer samples than readers: see the "
                "warnings above)"
            )
        else:
            what = (
                f"another rank had no usable sample in this pass (its error names the reason), so none of the "
                f"{usable} usable samples of rank {rank} was trained on"
            )
        return Geor1Error(
            f"{self.name} pass {stats.epoch}: no usable sample in {source}: {what}. A pass without one trains "
            "nothing, and a run over it would never end: is this the data this task expects? "
            "(`geor1 data inspect` shows what the shards hold)"
        )

    def _padded(self, it: Iterator[Any], any_rank: Callable[[bool], bool], stats: PassStats) -> Iterator[Any]:
        """Evaluation: every batch of every rank is read; a rank whose batches ran out yields empty batches
        (`Batch()`) while another rank still has one (`any_rank`, a collective), so ranks stay in step (a sharded
        model's forward is a collective) and nothing is left unread."""
        exhausted = False
        while True:
            batch = None if exhausted else next(it, None)
            exhausted = batch is None
            if not any_rank(not exhausted):
                break
            stats.batches += 1
            if batch is not None:
                stats.count(batch)
            yield Batch() if batch is None else batch
        # collectives on every rank (the loop above ends on all of them together): an evaluation of nothing is an
        # error unless it is a resumed one with every sample done (nothing skipped, keys excluded)
        if not any_rank(stats.samples > 0) and any_rank(
            stats.skipped > 0 or not getattr(self.dataset, "exclude", None)
        ):
            raise self._empty_pass(stats)
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


def _skip_reasons(batch: Any) -> list[str]:
    return (batch.get("skip_reasons") if isinstance(batch, dict) else getattr(batch, "reasons", None)) or []


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
        self._exclude: frozenset[str] = frozenset()  # keys an evaluation resumed by key does not read again
        self._eval_limit: int | None = None

    def stream(self, split: str, train: bool) -> ShardStream:
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        """Whether the data holds shards of `split` (a Geor1Error where a root names nothing at all)."""
        return True

    def data_name(self) -> str:
        """The roots of the data, for messages."""
        return type(self).__name__

    def exclude_keys(self, keys: Iterable[str]) -> None:
        """Keys the test and predict loaders do not read (an evaluation resumed by key: those are written)."""
        self._exclude = frozenset(keys)

    def limit_evaluation(self, samples: int | None) -> None:
        """The test and predict loaders read at most `samples` samples per process (None: all)."""
        self._eval_limit = samples

    def _any_rank(self, has_batch: bool) -> bool:
        """Some rank still has a batch (a collective under several processes)."""
        if self.trainer is not None and self.trainer.world_size > 1:
            return bool(self.trainer.strategy.reduce_boolean_decision(has_batch, all=False))
        return has_batch

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
        if (
            epochs.started == epochs.processed > 0
            and batches.is_last_batch
            and 0 < batches.current.ready == batches.current.processed
        ):
            return True
        self._batches_before_pass = int(batches.current.processed)
        return False

    def _loader(self, split: str, train: bool, evaluation: bool = False) -> StreamLoader:
        """The loader of `split`. `evaluation` (test, predict): every sample of every rank is read (ranks that ran
        out yield empty batches until all are done), keys in `exclude_keys` are not read, and prompts of like sizes
        are batched together."""
        start, skip = 0, 0
        if train and self._resume is not None:
            start, skip = self._resume["epoch"], self._resume["batches_done"]
            self._resume = None
        elif train and self.trainer is not None:
            start = self.trainer.current_epoch
        stream = self.stream(split, train)
        if evaluation:
            stream.exclude = self._exclude
            stream.group_window = EVAL_GROUP_BATCHES * int(self.hparams["batch_size"])
            if self._eval_limit is not None:
                stream.samples_per_epoch = self._eval_limit
        loader = StreamLoader(
            stream,
            start_pass=start,
            skip=skip,
            agree=self._agree,
            on_pass_end=self._record_pass(split),
            name=split,
            ended=self._epoch_already_ended if train else None,
            until_all_done=self._any_rank if evaluation else None,
            batch_size=self.hparams["batch_size"],
            num_workers=self.hparams["num_workers"],
            collate_fn=self.collate_fn,
        )
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
        """The validation loader; none (`[]`, and training runs without validation) when `val_split` is "" or, with
        a warning, when the data has no shards of it (one's own data converted without a held-out split)."""
        split = self.hparams["val_split"]
        if not split:
            return []
        if not self.has_split(split):
            log.warning(
                "no '%s' shards in %s: training runs without validation (hold some data out with `geor1 data "
                'convert ... --val-fraction 0.1`, or set `val_split: ""` to say there is none)',
                split,
                self.data_name(),
            )
            return []
        return self._loader(split, False)

    def test_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams["test_split"], False, evaluation=True)

    def predict_dataloader(self) -> StreamLoader:
        return self._loader(self.hparams["test_split"], False, evaluation=True)
