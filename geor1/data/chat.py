"""Chat samples from shards: pairing episodes, CoT exemplar shards and pair shards, as `ChatSample`s for the SFT
and GRPO objectives, and `ChatShardDataModule` to stream them."""

from __future__ import annotations

import json
from typing import Any


from geor1 import Geor1Error
from geor1.data.schema import SampleError, decode_image, validate_meta
from geor1.data.shards import split_shards
from geor1.data.stream import Batch, ShardStream, StreamingDataModule
from geor1.model.chat import ChatSample, Prompt
from geor1.prompts import geolocate_prompt, pairing_prompt

TASKS = ("pairing", "geolocate")


class ChatDecoder:
    """raw sample -> ChatSample. The task comes from the sample's json (`task`), else from `task`, else from its
    shape (`k` candidates: pairing). Pairing shows ground + K tiles; geolocation shows the ground view only."""

    def __init__(self, task: str | None = None) -> None:
        if task is not None and task not in TASKS:
            raise Geor1Error(f"task must be one of {TASKS}, got {task!r}")
        self.task = task

    def __call__(self, raw: dict[str, Any]) -> ChatSample:
        key = str(raw.get("__key__", "?"))
        if "json" not in raw:
            raise SampleError(key, "json", "missing")
        try:
            meta = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise SampleError(key, "json", f"bad JSON ({e})") from None
        validate_meta(key, meta)
        task = meta.get("task") or self.task or ("pairing" if "k" in meta else "geolocate")
        names = ["ground.jpg"]
        if task == "pairing":
            if not isinstance(meta.get("k"), int) or not isinstance(meta.get("answer"), int):
                raise SampleError(key, "k", "a pairing episode needs integer 'k' and 'answer'")
            if not 0 <= meta["answer"] < meta["k"]:
                raise SampleError(key, "answer", f"{meta['answer']} is not a candidate index below k={meta['k']}")
            names += [f"cand{i}.jpg" for i in range(meta["k"])]
        images = []
        for name in names:
            if name not in raw:
                raise SampleError(key, name, "missing")
            images.append(decode_image(key, name, raw[name]))
        text = meta.get("prompt") or (pairing_prompt(meta["k"]) if task == "pairing" else geolocate_prompt())
        meta = {**meta, "task": task}
        if task == "pairing":
            meta.setdefault("answer_letter", chr(ord("A") + meta["answer"]))
        return ChatSample(key, Prompt(text, images), meta.get("response"), meta)


class ChatShardDataModule(StreamingDataModule):
    """Streams chat samples from one or more shard folders (episodes, CoT exemplars, pairs).

    Args:
        roots: shard folder(s); samples of all of them are mixed (shard order shuffled, then the buffer).
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
    """

    def __init__(self, roots: str | list[str] = "data/sft", task: str | None = None, batch_size: int = 8,
                 num_workers: int = 0, shuffle_buffer: int = 500, samples_per_epoch: int | None = None,
                 resampled: bool = False, train_split: str = "train", val_split: str = "val",
                 test_split: str = "test", seed: int = 0, root_weights: list[int] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.roots = [roots] if isinstance(roots, str) else list(roots)
        if root_weights is not None and (len(root_weights) != len(self.roots) or min(root_weights) < 1):
            raise Geor1Error(f"root_weights needs one whole number >= 1 per root ({len(self.roots)} roots), got "
                             f"{root_weights}")
        self.root_weights = list(root_weights or [1] * len(self.roots))
        self.decoder = ChatDecoder(task)

    def stream(self, split: str, train: bool) -> ShardStream:
        weights = self.root_weights if train else [1] * len(self.roots)
        shards = [s for root, w in zip(self.roots, weights) for s in split_shards(root, split) * w]
        if not shards:
            raise Geor1Error(f"no shards for split '{split}' in {', '.join(self.roots)}")
        return ShardStream(shards, shuffle_buffer=self.hparams.shuffle_buffer if train else 0,
                           seed=self.hparams.seed, resampled=self.hparams.resampled and train,
                           samples_per_epoch=self.hparams.samples_per_epoch if train else None,
                           decode=self.decoder)

    def transfer_batch_to_device(self, batch: Any, device, dataloader_idx: int) -> Any:
        return batch  # PIL images and text: the Policy tokenises and moves them


__all__ = ["Batch", "ChatDecoder", "ChatShardDataModule"]
