"""Photos without coordinates: image files, folders, globs or a CSV of paths, streamed as chat samples with no
target, for `geor1 predict` and `geor1 geolocate` (what a user of a trained model does first).

    paths     files, folders (searched recursively), quoted globs, CSVs of paths -> (key, path), sorted by key
    split     this reader's paths: every n-th by (rank, worker), as the shard streams split shards
    exclude   keys a resumed prediction run already wrote are not read
    decode    ChatSample(prompt of the task, no target, meta {"path"})     (an unreadable image: skipped, counted)
    group     prompts of like sizes together (image pixels), within windows

A key is the photo's path relative to the folder it was found in (extension kept), or the path as given for a
file, a glob match or a CSV row; keys are unique, and a photo named twice is read once (a warning says so).
"""

from __future__ import annotations

import csv
import glob
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from torch.utils.data import IterableDataset, get_worker_info

from geor1 import Geor1Error
from geor1.data.sample import ChatSample, Prompt
from geor1.data.stream import StreamingDataModule, StreamItem, _rank_and_world, _windows, item_size
from geor1.tasks import get_task

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
PATH_COLUMNS = ("path", "image", "file", "filename", "IMG_ID", "id")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _csv_paths(csv_path: Path, path_col: str | None) -> list[tuple[str, str]]:
    """(key, path) of every row of a CSV of photo paths (relative paths are relative to the CSV's folder)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        col = path_col or next((c for c in PATH_COLUMNS if c in header), None)
        if col is None or col not in header:
            raise Geor1Error(
                f"{csv_path}: no photo path column among {', '.join(header) or '(no header)'} "
                f"(expected one of {', '.join(PATH_COLUMNS)}, or name it with path_col)"
            )
        out = []
        for n, row in enumerate(reader, start=2):
            value = (row.get(col) or "").strip()
            if not value:
                raise Geor1Error(f"{csv_path}:{n}: empty {col!r}")
            p = Path(value)
            out.append((value, str(p if p.is_absolute() else csv_path.parent / p)))
    return out


def photo_paths(photos: str | Sequence[str], path_col: str | None = None) -> list[tuple[str, str]]:
    """(key, path) of every photo named by `photos` (files, folders, globs, CSVs of paths), sorted by key; a clear
    error for a name that matches nothing."""
    items: list[tuple[str, str]] = []
    for spec in [photos] if isinstance(photos, str) else list(photos):
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _is_image(q))
            if not found:
                raise Geor1Error(f"{spec}: a folder with no photos ({', '.join(IMAGE_SUFFIXES)})")
            items += [(str(q.relative_to(p)), str(q)) for q in found]
        elif p.is_file() and p.suffix.lower() == ".csv":
            items += _csv_paths(p, path_col)
        elif p.is_file():
            items.append((str(spec), str(p)))
        elif glob.has_magic(spec):
            matches = sorted(m for m in glob.glob(spec, recursive=True) if Path(m).is_file() and _is_image(Path(m)))
            if not matches:
                raise Geor1Error(f"{spec}: the pattern matches no photo")
            items += [(m, m) for m in matches]
        else:
            raise Geor1Error(f"{spec}: no such file, folder or pattern")
    unique: dict[str, str] = {}
    for key, path in items:
        if key in unique:
            log.warning("photo %s named twice: read once", key)
            continue
        unique[key] = path
    if not unique:
        raise Geor1Error("no photos given")
    return sorted(unique.items())


class PhotoStream(IterableDataset):
    """The photos of one reader (rank x worker), as StreamItems of ChatSamples without a target (see the module
    docstring). Has the `exclude`, `group_window` and `set_epoch` a `StreamLoader` uses."""

    def __init__(self, items: list[tuple[str, str]], task: str = "geolocate", question: str | None = None) -> None:
        super().__init__()
        self.items = items
        self.task = task
        self.question = question
        self.exclude: frozenset[str] = frozenset()
        self.group_window = 0
        self.rank_world: tuple[int, int] | None = None
        self.resampled = False
        self.samples_per_epoch = None

    def set_epoch(self, epoch: int) -> None:
        self.rank_world = _rank_and_world()

    def _mine(self) -> Iterator[tuple[str, str]]:
        rank, world = self.rank_world or _rank_and_world()
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        mine = itertools.islice(self.items, rank * workers + worker, None, world * workers)
        return (item for item in mine if item[0] not in self.exclude)

    def _decode(self, items: Iterable[tuple[str, str]]) -> Iterator[StreamItem]:
        task = get_task(self.task)
        text = self.question or task.prompt(None)  # geolocation's prompt needs no target
        pending: list[str] = []
        reasons: list[str] = []
        for key, path in items:
            try:
                with Image.open(path) as im:
                    image = im.convert("RGB")
            except (OSError, UnidentifiedImageError, ValueError) as e:
                log.warning("skipping unreadable photo %s: %s", path, e)
                pending.append(key)
                reasons.append(f"field 'photo': unreadable image ({type(e).__name__})")
                continue
            yield StreamItem(ChatSample(key, Prompt(text, [image]), None, None, {"path": path}), pending, reasons)
            pending, reasons = [], []
        if pending:
            yield StreamItem(None, pending, reasons)

    def __iter__(self) -> Iterator[StreamItem]:
        items = self._decode(self._mine())
        if self.group_window <= 1:
            return items
        return (e for w in _windows(items, self.group_window) for e in _sorted_window(w))


def _sorted_window(window: list[StreamItem]) -> list[StreamItem]:
    real = sorted((e for e in window if e.item is not None), key=lambda e: item_size(e.item))
    return real + [e for e in window if e.item is None]


class PhotoDataModule(StreamingDataModule):
    """Photos without coordinates for `geor1 predict` (and `geor1 geolocate`), split across ranks and workers.

    Args:
        photos: image files, folders (recursive), quoted globs ("photos/**/*.jpg") or CSVs of photo paths.
        task: the task whose prompt is asked ("geolocate").
        question: the user text with one `<image>` marker (None: the task's prompt).
        path_col: the path column of a CSV (default: the first of path, image, file, filename, IMG_ID, id).
        batch_size: photos per batch (per process).
        num_workers: DataLoader workers per process.
    """

    def __init__(
        self,
        photos: str | list[str],
        task: str = "geolocate",
        question: str | None = None,
        path_col: str | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if task != "geolocate":
            raise Geor1Error(f"photos without coordinates are geolocated: task must be 'geolocate', got {task!r}")
        self.save_hyperparameters()
        self.items = photo_paths(photos, path_col)
        self.hparams["test_split"] = "photos"  # one split: the photos

    def stream(self, split: str, train: bool) -> Any:
        if train:
            raise Geor1Error("PhotoDataModule holds photos without coordinates: use it with `geor1 predict`")
        return PhotoStream(self.items, self.hparams["task"], self.hparams["question"])

    def train_dataloader(self) -> Any:
        raise Geor1Error("PhotoDataModule holds photos without coordinates: use it with `geor1 predict`")

    def val_dataloader(self) -> list:
        return []

    def test_dataloader(self) -> Any:
        raise Geor1Error(
            "PhotoDataModule holds photos without coordinates: `geor1 test` needs truth (shards from "
            "`geor1 data convert csv`); use `geor1 predict` for photos"
        )

    def transfer_batch_to_device(self, batch: Any, device, dataloader_idx: int) -> Any:
        return batch  # PIL images and text: the Policy tokenises and moves them
