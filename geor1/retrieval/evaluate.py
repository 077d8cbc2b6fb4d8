"""Cross-view retrieval evaluation (`geor1 eval retrieval`): the ground views of a shard split, embedded with the
encoder the index was built with, as queries against the index's satellite tiles; Recall@k = the share of queries
whose own tile (same sample key) is among the k most similar tiles of the whole index."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from geor1 import Geor1Error

log = logging.getLogger(__name__)


def recall_from_rows(rows: np.ndarray, truth: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """rows [Q, K] retrieved index rows (best first), truth [Q] the true row of each query -> {"recall@k": share}.

    >>> recall_from_rows(np.array([[3, 1], [0, 2]]), np.array([1, 5]), (1, 2))
    {'recall@1': 0.0, 'recall@2': 0.5}
    """
    hits = rows == truth[:, None]  # [Q, K]
    return {f"recall@{k}": float(hits[:, :k].any(1).mean()) for k in ks}


def evaluate_retrieval(
    index_dir: str | Path,
    shards: str | Path,
    split: str = "test",
    ckpt: str | None = None,
    ks: tuple[int, ...] = (1, 5, 10),
    batch_size: int = 128,
    device: str = "cpu",
) -> dict[str, Any]:
    """Recall@k of `split`'s ground views against the index at `index_dir` (its encoder: `ckpt`, else the one
    recorded by `geor1 index build`). Queries whose tile is not in the index cannot be scored: they are counted
    (`queries_without_tile`), never silently dropped."""
    from geor1.retrieval.embed import embed_shards, load_contrastive
    from geor1.retrieval.index import SatIndex

    index = SatIndex.load(index_dir)
    ckpt = ckpt or index.info.get("ckpt")
    if not ckpt:
        raise Geor1Error(f"index {index_dir} does not record its encoder checkpoint: pass --ckpt")
    module, data_hp = load_contrastive(ckpt, device)
    ground_size = tuple(index.info.get("ground_size") or data_hp.get("ground_size", (128, 192)))
    sat_size = int(index.info.get("sat_size") or data_hp.get("sat_size", 128))
    ground, _, meta = embed_shards(module, shards, [split], ground_size, sat_size, batch_size, device)
    truth = [index.row_of_key.get(m["key"]) for m in meta]  # [Q] row of each query's own tile, or None
    scored = [i for i, t in enumerate(truth) if t is not None]
    if not scored:
        raise Geor1Error(
            f"none of the {len(meta)} '{split}' ground views of {shards} has its tile in index "
            f"{index_dir} (build the index from the same shards and split)"
        )
    if len(scored) < len(meta):
        log.warning("%d of %d queries have no tile in the index and are not scored", len(meta) - len(scored), len(meta))
    _, rows = index.search(ground[scored], max(ks))  # [Q, k]
    out: dict[str, Any] = {
        "split": split,
        "queries": len(scored),
        "gallery": len(index.meta),
        "queries_without_tile": len(meta) - len(scored),
        "ckpt": str(ckpt),
    }
    out.update(recall_from_rows(rows, np.array([truth[i] for i in scored]), ks))
    out.update({f"chance@{k}": min(1.0, k / len(index.meta)) for k in ks})
    return out
