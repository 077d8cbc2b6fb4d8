"""Chat samples from shards: pairing episodes, CoT exemplar shards and pair shards, as `ChatSample`s for the SFT
and GRPO objectives, and `ChatShardDataModule` to stream them."""

from __future__ import annotations

import logging
from typing import Any

from geor1 import Geor1Error
from geor1.data.reader import shard_urls
from geor1.data.sample import ChatSample, Prompt
from geor1.data.schema import SampleError, decode_image, read_meta
from geor1.data.stream import Batch, ShardStream, StreamingDataModule
from geor1.tasks import TASK_NAMES, get_task

log = logging.getLogger(__name__)


class ChatDecoder:
    """raw sample -> ChatSample with the typed target of its task. The task is named: the sample's json `task`,
    else the decoder's `task`; only shards written before samples named their task (no `task` in the json, no
    `task` given) fall back to their shape, here and nowhere else. The task reads its target from the json and says
    which images the prompt shows (pairing: ground + K tiles; geolocation: the ground view)."""

    def __init__(self, task: str | None = None) -> None:
        if task is not None and task not in TASK_NAMES:
            raise Geor1Error(f"task must be one of {TASK_NAMES}, got {task!r}")
        self.task = task

    def __call__(self, raw: dict[str, Any]) -> ChatSample:
        key, meta = read_meta(raw)
        name = meta.get("task") or self.task
        if name is None:  # backwards compatibility: shards of before `task`; episode shards are those with `k`
            name = "pairing" if "k" in meta else "geolocate"
        if name not in TASK_NAMES:
            raise SampleError(key, "task", f"must be one of {TASK_NAMES}, got {name!r}")
        task = get_task(name)
        target = task.target_from_meta(key, meta)
        images = []
        for image in task.image_names(target):
            if image not in raw:
                raise SampleError(key, image, "missing")
            images.append(decode_image(key, image, raw[image]))
        text = meta.get("prompt") or task.prompt(target)
        return ChatSample(key, Prompt(text, images), target, meta.get("response"), {**meta, "task": name})


class ChatShardDataModule(StreamingDataModule):
    """Streams chat samples from one or more shard folders (episodes, CoT exemplars, pairs).

    Every root must name shards: a path that does not exist is an error naming it, and so is a root without shards
    of the training or test split. A root without shards of the validation split is left out of validation with a
    warning (no validation at all when no root has them).

    Args:
        roots: shard folder(s) or URL specs; samples of all of them are mixed (shard order shuffled, then the
            buffer).
        task: "pairing" | "geolocate" | None (from each sample).
        batch_size: prompts per batch (per process).
        num_workers: DataLoader workers per process.
        shuffle_buffer: training shuffle buffer (samples).
        samples_per_epoch: training samples per epoch per reader (None: one pass).
        resampled: draw training shards with replacement (infinite stream; set samples_per_epoch).
        train_split: split names.
        val_split: validation split ("" for none).
        test_split: test split.
        seed: data order seed.
        root_weights: per root, how many times its training shards enter the draw (with `resampled`: the mixing
            ratio of the roots, e.g. [3, 1] for three pairing shards per geolocation shard); None: once each.
        curriculum: root weights per training pass (epoch), whole numbers >= 0 with one > 0 in each row; the last
            row holds for every later pass. With `resampled` and `samples_per_epoch` a pass is that many samples:
            e.g. roots [random episodes, hard episodes] with [[1, 0], [1, 1], [0, 1]] goes from random to hard
            negatives, and roots of K=2, 3, 4 episodes with [[1, 0, 0], [0, 1, 0], [0, 0, 1]] grows K. Replaces
            `root_weights` (give one or the other). Exact on resume: a pass's data depends on its number only.
    """

    def __init__(
        self,
        roots: str | list[str] = "data/sft",
        task: str | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        shuffle_buffer: int = 500,
        samples_per_epoch: int | None = None,
        resampled: bool = False,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        seed: int = 0,
        root_weights: list[int] | None = None,
        curriculum: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.roots = [roots] if isinstance(roots, str) else list(roots)
        if root_weights is not None and (len(root_weights) != len(self.roots) or min(root_weights) < 1):
            raise Geor1Error(
                f"root_weights needs one whole number >= 1 per root ({len(self.roots)} roots), got {root_weights}"
            )
        if curriculum is not None:
            if root_weights is not None:
                raise Geor1Error("give root_weights or curriculum, not both (a curriculum sets the weights per pass)")
            for i, row in enumerate(curriculum):
                if len(row) != len(self.roots) or min(row) < 0 or max(row) < 1:
                    raise Geor1Error(
                        f"curriculum[{i}] = {row}: one whole number >= 0 per root ({len(self.roots)} roots), "
                        "at least one > 0"
                    )
            if not curriculum:
                raise Geor1Error("curriculum needs at least one row of root weights (or leave it out)")
        self.root_weights = list(root_weights or [1] * len(self.roots))
        self.curriculum = [list(row) for row in curriculum] if curriculum else None
        self.decoder = ChatDecoder(task)
        self._warned: set[str] = set()  # splits whose roots without shards were warned about

    def _root_shards(self, split: str) -> list[list[str]]:
        """Per root, its shards of `split`. Geor1Error naming a root that names nothing (`shard_urls`), or one
        without shards of `split` unless `split` is the validation split (then a warning: no validation on it)."""
        per_root = [shard_urls(root, split) for root in self.roots]
        empty = [root for root, shards in zip(self.roots, per_root, strict=True) if not shards]
        if empty and split == self.hparams["val_split"]:
            if len(empty) < len(self.roots) and split not in self._warned:
                self._warned.add(split)
                log.warning("no '%s' shards in %s: validation reads the other roots only", split, ", ".join(empty))
        elif empty:
            raise Geor1Error(
                f"no shards for split '{split}' in {', '.join(empty)}"
                + (f" (of roots {', '.join(self.roots)})" if len(self.roots) > 1 else "")
                + f": every root needs `{split}-NNNNNN.tar` shards (or `{{split}}` in a URL spec)"
            )
        return per_root

    def _shards(self, split: str, weights: list[int], per_root: list[list[str]]) -> list[str]:
        shards = [s for urls, w in zip(per_root, weights, strict=True) for s in urls * w]
        if not shards:
            raise Geor1Error(f"no shards for split '{split}' in {', '.join(self.roots)} (root weights {weights})")
        return shards

    def has_split(self, split: str) -> bool:
        return any(self._root_shards(split))

    def data_name(self) -> str:
        return ", ".join(self.roots)

    def stream(self, split: str, train: bool) -> ShardStream:
        weights = self.root_weights if train else [1] * len(self.roots)
        per_root = self._root_shards(split)
        shards = self._shards(split, weights, per_root)
        passes = [self._shards(split, row, per_root) for row in self.curriculum] if train and self.curriculum else None
        hp = self.hparams
        task = f"task '{hp['task']}'" if hp["task"] else "the task each sample's json names"
        return ShardStream(
            shards,
            source=f"{'roots' if len(self.roots) > 1 else 'root'} {', '.join(self.roots)} (split '{split}', {task})",
            passes=passes,
            shuffle_buffer=hp["shuffle_buffer"] if train else 0,
            seed=hp["seed"],
            resampled=hp["resampled"] and train,
            samples_per_epoch=hp["samples_per_epoch"] if train else None,
            decode=self.decoder,
        )

    def transfer_batch_to_device(self, batch: Any, device, dataloader_idx: int) -> Any:
        return batch  # PIL images and text: the Policy tokenises and moves them


__all__ = ["Batch", "ChatDecoder", "ChatShardDataModule"]
