"""Reading shards robustly: raw samples grouped by key, a truncated or unreadable shard skipped with a warning
that names it (the complete samples before the damage still arrive)."""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TruncatedShard(tarfile.TarError):
    pass


def iter_raw_samples(shards: Sequence[str | Path], on_broken_shard: Callable[[dict[str, str]], Any] | None = None
                     ) -> Iterator[dict[str, Any]]:
    """Yield {"__key__", "__url__", <ext>: bytes} per sample, in tar order (a sample's files are adjacent).

    A file name splits at the first dot of its basename: `abc.ground.jpg` -> key `abc`, extension `ground.jpg`.
    A shard that ends without the tar end-of-archive marker was truncated: its last sample may be incomplete, so it
    is dropped with the warning (tarfile alone stops silently when a cut falls on a header).
    """
    for shard in shards:
        current: dict[str, Any] | None = None
        try:
            with open(shard, "rb") as f:
                if f.read(1) == b"":
                    raise TruncatedShard("empty file")
                f.seek(0)
                with tarfile.open(fileobj=f, mode="r|") as tar:
                    for member in tar:
                        if not member.isfile():
                            continue
                        base = member.name.rsplit("/", 1)[-1]
                        if "." not in base:
                            continue
                        stem, ext = base.split(".", 1)
                        key = member.name[: len(member.name) - len(base)] + stem
                        content = tar.extractfile(member)
                        if content is None:  # not reached: regular files (checked above) always extract
                            continue
                        data = content.read()
                        if current is not None and current["__key__"] != key:
                            yield current
                            current = None
                        if current is None:
                            current = {"__key__": key, "__url__": str(shard)}
                        current[ext] = data
                    end = tar.offset
                f.seek(end)
                marker = f.read(1024)
                if len(marker) < 1024 or any(marker):
                    raise TruncatedShard("no end-of-archive marker")
        except (tarfile.TarError, OSError, EOFError) as e:
            log.warning("shard %s is truncated or unreadable (%s: %s); skipping the rest of it",
                        shard, type(e).__name__, e)
            if on_broken_shard is not None:
                on_broken_shard({"shard": str(shard), "error": f"{type(e).__name__}: {e}"})
            current = None  # possibly incomplete: not yielded
        if current is not None:
            yield current
