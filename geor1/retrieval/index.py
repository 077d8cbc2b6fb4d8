"""FAISS indexes of satellite-tile embeddings, saved with aligned metadata, searched on GPU when there is one.

An index folder holds
    index.faiss      the FAISS index of satellite embeddings (inner product on L2-normalised vectors = cosine)
    sat.npy          the same embeddings, float32 [N, D] (exact re-ranking, mining, rebuilding another index type)
    ground.npy       ground-view embeddings of the same samples [N, D] (queries for mining and retrieval metrics)
    meta.jsonl       one line per row: key, lat, lon, split, city, country (row i of every file is the same sample)
    index.json       type, dimension, parameters, the encoder checkpoint and the shards it was built from
Loading reads plain arrays and JSON (no pickle).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geor1 import Geor1Error

log = logging.getLogger(__name__)
INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass
class IndexSpec:
    """FAISS index choice. IVF: `nlist` cells (default ~4*sqrt(N)), `nprobe` probed per query; HNSW: `m` links per
    node, `ef_construction`, `ef_search`."""

    type: str = "flat"
    nlist: int | None = None
    nprobe: int = 16
    m: int = 32
    ef_construction: int = 80
    ef_search: int = 64


def _faiss():
    try:
        import faiss
    except ImportError:
        raise Geor1Error("FAISS is not installed: pip install faiss-cpu (or faiss-gpu on a CUDA machine)") from None
    return faiss


def build_faiss_index(vectors: np.ndarray, spec: IndexSpec, seed: int = 0):
    """An inner-product FAISS index over vectors [N, D] float32 (L2-normalised for cosine)."""
    faiss = _faiss()
    if spec.type not in INDEX_TYPES:
        raise Geor1Error(f"index type must be one of {INDEX_TYPES}, got {spec.type!r}")
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = x.shape
    if n == 0:
        raise Geor1Error("cannot build an index over zero vectors")
    if spec.type == "flat":
        index = faiss.IndexFlatIP(d)
    elif spec.type == "ivf":
        nlist = spec.nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))  # FAISS wants >= 39 points per cell
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        sample = min(n, 64 * nlist)  # k-means on 64 points per cell: as good, and far faster than on all of N
        train = x if sample == n else x[np.random.default_rng(seed).choice(n, sample, replace=False)]
        index.train(train)
        index.nprobe = min(spec.nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(d, spec.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.ef_construction
        index.hnsw.efSearch = spec.ef_search
    index.add(x)
    return index


def to_gpu_if_available(index):
    """The index on all GPUs when FAISS sees any (faiss-gpu on a CUDA machine); else unchanged. HNSW stays on CPU
    (FAISS has no GPU HNSW)."""
    faiss = _faiss()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus > 0 and not isinstance(index, faiss.IndexHNSWFlat):
        log.info("FAISS index moved to %d GPU(s)", gpus)
        return faiss.index_cpu_to_all_gpus(index)
    return index


class SatIndex:
    """A loaded (or freshly built) index folder: FAISS index + embeddings + metadata."""

    def __init__(
        self, index, sat: np.ndarray, ground: np.ndarray | None, meta: list[dict[str, Any]], info: dict[str, Any]
    ) -> None:
        if len(meta) != len(sat) or (ground is not None and len(ground) != len(sat)):
            raise Geor1Error(f"index parts disagree: {len(sat)} satellite rows, {len(meta)} metadata rows")
        self.index, self.sat, self.ground, self.meta, self.info = index, sat, ground, meta, info
        self.row_of_key = {m["key"]: i for i, m in enumerate(meta)}

    @classmethod
    def build(
        cls,
        sat: np.ndarray,
        ground: np.ndarray | None,
        meta: list[dict[str, Any]],
        spec: IndexSpec,
        info: dict[str, Any] | None = None,
    ) -> SatIndex:
        index = build_faiss_index(sat, spec)
        return cls(
            index,
            sat.astype(np.float32),
            None if ground is None else ground.astype(np.float32),
            meta,
            {"spec": asdict(spec), "dim": int(sat.shape[1]), "count": len(meta), **(info or {})},
        )

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [Q, k], rows [Q, k]) of the k most similar satellite tiles; rows are -1 past the index size."""
        index = getattr(self, "_search_index", None)
        if index is None:
            index = self._search_index = to_gpu_if_available(self.index)
        k = min(k, len(self.meta))
        return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, out: str | Path) -> Path:
        faiss = _faiss()
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(out / "index.faiss"))
        np.save(out / "sat.npy", self.sat)
        if self.ground is not None:
            np.save(out / "ground.npy", self.ground)
        with open(out / "meta.jsonl", "w") as f:
            for m in self.meta:
                f.write(json.dumps(m, sort_keys=True) + "\n")
        (out / "index.json").write_text(json.dumps(self.info, indent=2, sort_keys=True) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | Path) -> SatIndex:
        faiss = _faiss()
        folder = Path(folder)
        for name in ("index.faiss", "sat.npy", "meta.jsonl", "index.json"):
            if not (folder / name).is_file():
                raise Geor1Error(
                    f"'{folder}' is not a geor1 index folder: {name} is missing (build one with `geor1 index build`)"
                )
        meta = [json.loads(line) for line in (folder / "meta.jsonl").read_text().splitlines() if line.strip()]
        if not meta:
            raise Geor1Error(f"index '{folder}' is empty")
        ground = np.load(folder / "ground.npy", allow_pickle=False) if (folder / "ground.npy").is_file() else None
        return cls(
            faiss.read_index(str(folder / "index.faiss")),
            np.load(folder / "sat.npy", allow_pickle=False),
            ground,
            meta,
            json.loads((folder / "index.json").read_text()),
        )


def build_index(
    ckpt: str | Path,
    shards: str | Path,
    out: str | Path,
    spec: IndexSpec | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    batch_size: int = 128,
    device: str | None = None,
) -> SatIndex:
    """Embed every tile of `splits` of a shard folder with a trained ContrastiveModule checkpoint (at the image sizes
    it was trained with), index the satellite embeddings and save the folder `out` (what `geor1 index build` does).
    `device`: default the GPU when there is one."""
    import torch

    from geor1.retrieval.embed import embed_shards, load_contrastive

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    spec = spec or IndexSpec()
    module, data_hp = load_contrastive(ckpt, device)
    ground_size = tuple(data_hp.get("ground_size", (128, 192)))
    sat_size = int(data_hp.get("sat_size", 128))
    ground, sat, meta = embed_shards(module, shards, list(splits), ground_size, sat_size, batch_size, device)
    index = SatIndex.build(
        sat,
        ground,
        meta,
        spec,
        info={"ckpt": str(ckpt), "shards": str(shards), "ground_size": list(ground_size), "sat_size": sat_size},
    )
    index.save(out)
    return index
