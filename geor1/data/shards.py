"""Writing shards: `<root>/<split>-%06d.tar`, size-bounded, deterministic bytes, plus `<root>/manifest.json`.

Tar members are written with fixed mtime/uid/gid/mode so the same samples give the same bytes (reproducible data
sets, cacheable by hash). A sample's files are adjacent in the tar, as WebDataset requires.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path
from typing import Any

from geor1.data.schema import GROUND, META, SAT, SCHEMA_VERSION, SampleError, validate_key, validate_meta

log = logging.getLogger(__name__)


class ShardWriter:
    """Write validated samples of one split into size-bounded tar shards.

    >>> # with ShardWriter("data/geoworld", "train") as w: w.write("paris_0001", ground_jpg, sat_jpg, {...})
    """

    def __init__(self, root: str | Path, split: str, max_count: int = 1000, max_bytes: int = 256 * 2**20) -> None:
        if not split or "-" in split or "/" in split:
            raise ValueError(f"split name {split!r} must be non-empty, without '-' or '/'")
        self.root, self.split = Path(root), split
        self.max_count, self.max_bytes = max_count, max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.shards: list[str] = []
        self.count = self.total_bytes = 0
        self._tar: tarfile.TarFile | None = None
        self._in_shard = self._shard_bytes = 0
        self._keys: set[str] = set()

    def _open_next(self) -> tarfile.TarFile:
        self._close_current()
        name = f"{self.split}-{len(self.shards):06d}.tar"
        self.shards.append(name)
        # open across write() calls, closed by _close_current (close() / __exit__)
        self._tar = tarfile.open(self.root / name, "w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115
        self._in_shard = self._shard_bytes = 0
        return self._tar

    @staticmethod
    def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))

    def write(self, key: str, ground: bytes, sat: bytes | None, meta: dict[str, Any]) -> None:
        """Validate and append one pair sample; SampleError names the key and field of a bad one."""
        validate_meta(key, meta)
        files = {GROUND: ground} if sat is None else {GROUND: ground, SAT: sat}
        if not ground:
            raise SampleError(key, GROUND, "missing")
        self.write_files(key, files, meta)

    def write_files(self, key: str, files: dict[str, bytes], meta: dict[str, Any]) -> None:
        """Append one sample made of `files` (extension -> JPEG bytes) + its JSON metadata, adjacent in the tar."""
        validate_key(key)
        if key in self._keys:
            raise SampleError(key, "__key__", f"duplicate key in split '{self.split}'")
        for name, data in files.items():
            if not (isinstance(data, bytes) and data[:2] == b"\xff\xd8"):
                raise SampleError(key, name, "must be JPEG bytes")
        payload = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode()
        size = sum(len(d) for d in files.values()) + len(payload)
        tar = self._tar
        if tar is None or self._in_shard >= self.max_count or self._shard_bytes + size > self.max_bytes:
            tar = self._open_next()
        for name, data in files.items():
            self._add(tar, f"{key}.{name}", data)
        self._add(tar, f"{key}.{META}", payload)
        self._keys.add(key)
        self._in_shard += 1
        self._shard_bytes += size
        self.count += 1
        self.total_bytes += size

    def _close_current(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None

    def close(self) -> dict[str, Any]:
        self._close_current()
        return {"samples": self.count, "shards": list(self.shards), "bytes": self.total_bytes}

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_manifest(
    root: str | Path, splits: dict[str, dict[str, Any]], source: str, licence: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write (or update, split by split) `<root>/manifest.json`."""
    path = Path(root) / "manifest.json"
    manifest: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    manifest.update({"schema_version": SCHEMA_VERSION, "source": source, "licence": licence, **(extra or {})})
    manifest.setdefault("splits", {}).update(splits)
    manifest["splits"] = dict(sorted(manifest["splits"].items()))
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def folder_shards(root: str | Path, split: str) -> list[Path]:
    """The shard files of a split in a local dataset folder, from the manifest when there is one, else by name
    (`geor1.data.reader.split_shards` also takes WebDataset URL specs)."""
    root = Path(root)
    manifest = root / "manifest.json"
    if manifest.exists():
        names = json.loads(manifest.read_text()).get("splits", {}).get(split, {}).get("shards")
        if names is not None:
            return [root / n for n in names]
    return sorted(root.glob(f"{split}-*.tar"))
