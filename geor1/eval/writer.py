"""`PredictionWriter`: the rows of an evaluation or a prediction run, written as they come and resumable by key.

Each rank appends its rows to `<out>/parts/rank<R>.jsonl`, one JSON object per line, flushed after every batch. A
run started again over the same folder reads every part (whatever world size wrote it), and its loaders skip the
keys already written (`StreamingDataModule.exclude_keys`, `PhotoDataModule.exclude_keys`); a line cut short by a
kill is dropped and its sample done again. When the loop ends, rank 0 merges the parts into `<out>/predictions.csv`,
sorted by key: a killed and resumed run, a run on N processes and a run on one end with the same file.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from geor1 import Geor1Error

log = logging.getLogger(__name__)
PARTS = "parts"


def read_parts(out: Path) -> dict[str, dict[str, Any]]:
    """key -> row of every complete line in `<out>/parts/*.jsonl` (the first row of a key wins; a line cut short by a
    kill, at a file's end, is left out and counted in a warning)."""
    rows: dict[str, dict[str, Any]] = {}
    cut = 0
    for part in sorted((out / PARTS).glob("*.jsonl")):
        with open(part, encoding="utf-8") as f:
            for line in f:
                if not line.endswith("\n"):
                    cut += 1
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    cut += 1
                    continue
                rows.setdefault(str(row["key"]), row)
    if cut:
        log.warning("%s: %d prediction line(s) cut short by an interrupted run are done again", out / PARTS, cut)
    return rows


def _drop_cut_line(part: Path) -> None:
    """Truncate `part` after its last complete line: rows appended after a line cut short by a kill would otherwise
    join it and be lost with it."""
    if not part.is_file():
        return
    with open(part, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def write_csv(path: Path, rows: Iterable[dict[str, Any]], columns: Sequence[str]) -> Path:
    """Rows as a CSV with `columns` (missing values empty; floats written exactly, as Python's repr)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({c: "" if row.get(c) is None else row[c] for c in columns})
    tmp.replace(path)
    return path


class PredictionWriter(Callback):
    """Writes the rows an evaluation module hands it (`write`) into per-rank parts, skips the keys a previous run
    wrote, and merges everything into `predictions.csv` at the end (see the module docstring).

    Args:
        out_dir: the run's folder.
        columns: the columns of `predictions.csv`, in order.
        resume: read the parts of an earlier run in `out_dir` and skip their keys; False starts over (the parts are
            removed first).
    """

    def __init__(self, out_dir: str | Path, columns: Sequence[str], resume: bool = True) -> None:
        self.out = Path(out_dir)
        self.columns = list(columns)
        self.resume = resume
        self.done: dict[str, dict[str, Any]] = {}  # rows of an earlier run, read at set-up
        self._file: Any = None
        self._bar: Any = None  # rank 0's progress bar: photos (samples) per second
        self.written = 0

    @property
    def parts(self) -> Path:
        return self.out / PARTS

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage not in ("test", "predict"):
            return
        if trainer.is_global_zero:
            self.parts.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                for part in self.parts.glob("*.jsonl"):
                    part.unlink()
        trainer.strategy.barrier("geor1_writer_setup")
        self.done = read_parts(self.out) if self.resume else {}
        if self.done:
            datamodule = getattr(trainer, "datamodule", None)  # set by Lightning when a loop runs with one
            exclude = getattr(datamodule, "exclude_keys", None)
            if exclude is None:
                raise Geor1Error(
                    f"{self.out} holds {len(self.done)} predictions of an earlier run, and the data module "
                    f"{type(datamodule).__name__} cannot skip keys: give a new out_dir, or resume: false to start over"
                )
            exclude(self.done)
            log.info("resuming in %s: %d samples already done are skipped", self.out, len(self.done))
        part = self.parts / f"rank{trainer.global_rank}.jsonl"
        _drop_cut_line(part)
        self._file = open(part, "a", encoding="utf-8")  # noqa: SIM115  (kept open across batches, closed in merge/teardown)
        if trainer.is_global_zero:
            from tqdm import tqdm

            where = f"rank 0 of {trainer.world_size}" if trainer.world_size > 1 else str(self.out)
            self._bar = tqdm(desc=f"{stage} ({where})", unit="photo", disable=None, dynamic_ncols=True)

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        """Append `rows` to this rank's part and flush (a kill loses at most the batch being written)."""
        if self._file is None:
            raise Geor1Error("PredictionWriter.write before set-up (run the module through a Trainer)")
        for row in rows:
            self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        self.written += len(rows)
        if self._bar is not None:
            self._bar.update(len(rows))

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def merge(self, trainer: L.Trainer) -> list[dict[str, Any]] | None:
        """Close this rank's part; on rank 0 merge every part into predictions.csv (sorted by key) and return the
        rows; None on the other ranks. Every rank waits for the merge."""
        self._close()
        trainer.strategy.barrier("geor1_writer_parts")
        rows = None
        if trainer.is_global_zero:
            merged = read_parts(self.out)
            rows = [merged[k] for k in sorted(merged)]
            write_csv(self.out / "predictions.csv", rows, self.columns)
        trainer.strategy.barrier("geor1_writer_merged")
        return rows

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()  # after an interrupted loop what was written stays for the next run
