"""The held-out samples an evaluation runs on: one split of a shard folder decoded as chat samples of a task."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from geor1 import Geor1Error

if TYPE_CHECKING:
    from geor1.data.sample import ChatSample


def load_chat_samples(
    root: str | Path, split: str, task: str, limit: int | None = None
) -> tuple[list[ChatSample], int]:
    """The first `limit` (default all) decodable samples of `split` under `root`, as chat samples of `task`, and the
    number of corrupt samples skipped on the way (a count the caller reports, not a silent loss)."""
    from geor1.data.chat import ChatDecoder
    from geor1.data.reader import iter_raw_samples, shard_urls
    from geor1.data.schema import SampleError

    shards = shard_urls(root, split)
    if not shards:
        raise Geor1Error(f"no shards for split '{split}' in {root}")
    decode, samples, skipped = ChatDecoder(task), [], 0
    for raw in iter_raw_samples(shards):
        try:
            samples.append(decode(raw))
        except SampleError:
            skipped += 1
        if limit is not None and len(samples) >= limit:
            break
    return samples, skipped
