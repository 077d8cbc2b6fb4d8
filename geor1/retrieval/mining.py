"""Hard-negative mining of cross-view pairing episodes (Geo-R1's RL proxy task).

For every ground view, K satellite candidates: the true tile and K-1 negatives, all from the same split (no leak
across splits), none closer than `min_km` to the truth (no near-duplicate posing as a negative). Strategies:

    random  K-1 tiles drawn uniformly (beyond min_km)
    geo     drawn uniformly from the neighbourhood min_km <= d <= max_km
    hard    the K-1 most similar tiles by embedding (FAISS search with the ground embedding), beyond min_km
    hybrid  the K-1 most similar tiles within the neighbourhood min_km <= d <= max_km (exact re-ranking)

The answer position is balanced over the K letters within each split (a seeded permutation of equal counts, not
independent draws), and everything is deterministic for a seed. The paper published neither K, the radius nor the
rule: these are geor1's explicit choices.
"""

from __future__ import annotations

import json
import logging
import string
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geor1 import Geor1Error
from geor1.geo import EARTH_RADIUS_KM, haversine_km
from geor1.retrieval.index import SatIndex
from geor1.tasks import PairingTarget, PairingTask

log = logging.getLogger(__name__)
STRATEGIES = ("random", "geo", "hard", "hybrid")


@dataclass
class MiningSpec:
    k: int = 4
    strategy: str = "hybrid"
    min_km: float = 150.0
    max_km: float = 2000.0
    seed: int = 0
    splits: tuple[str, ...] = ("train", "val", "test")

    def check(self) -> None:
        if self.strategy not in STRATEGIES:
            raise Geor1Error(f"--strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 2 <= self.k <= 26:
            raise Geor1Error(f"--k must be within 2..26 (candidate letters A..Z), got {self.k}")
        if self.min_km < 0 or (self.strategy in ("geo", "hybrid") and self.max_km <= self.min_km):
            raise Geor1Error(f"need 0 <= min_km < max_km, got {self.min_km} and {self.max_km}")


@dataclass
class Episode:
    split: str
    query: int  # index row of the ground view (and of its true tile)
    candidates: list[int]  # K index rows, the truth at `answer`
    answer: int


@dataclass
class MiningReport:
    episodes: dict[str, int] = field(default_factory=dict)
    too_few_candidates: dict[str, list[str]] = field(default_factory=dict)
    letters: dict[str, dict[str, int]] = field(default_factory=dict)
    mean_negative_km: dict[str, float] = field(default_factory=dict)


def _unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    p, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(p) * np.cos(lam), np.cos(p) * np.sin(lam), np.sin(p)], -1)


def _chord(km: float) -> float:
    return 2.0 * np.sin(min(km / EARTH_RADIUS_KM, np.pi) / 2.0)


class Miner:
    """Mines episodes from a SatIndex (embeddings + metadata)."""

    def __init__(self, index: SatIndex, spec: MiningSpec) -> None:
        spec.check()
        if spec.strategy in ("hard", "hybrid") and index.ground is None:
            raise Geor1Error("this index has no ground embeddings (ground.npy); hard/hybrid mining needs them")
        self.index, self.spec = index, spec
        self.lat = np.array([m["lat"] for m in index.meta])
        self.lon = np.array([m["lon"] for m in index.meta])
        self.split = np.array([m["split"] for m in index.meta])

    def _ground(self, q: int) -> np.ndarray:
        """Query row q's ground embedding (hard and hybrid mining, whose index __init__ checked has them)."""
        if self.index.ground is None:
            raise Geor1Error("this index has no ground embeddings (ground.npy); hard/hybrid mining needs them")
        return self.index.ground[q]

    def negatives(self, q: int, pool: np.ndarray, tree, rng: np.random.Generator) -> list[int]:
        """K-1 negative rows for query row q, from `pool` (rows of q's split), or fewer if the pool runs dry."""
        s, need = self.spec, self.spec.k - 1
        if s.strategy == "hard":
            return self._hard(q, need)
        if s.strategy == "random":
            order = rng.permutation(pool)
            d = haversine_km(self.lat[q], self.lon[q], self.lat[order], self.lon[order])
            return [int(r) for r in order[d >= s.min_km][:need]]
        near = np.array(tree.query_ball_point(_unit(self.lat[q], self.lon[q]), _chord(s.max_km)), dtype=np.int64)
        near = pool[near] if len(near) else near
        d = haversine_km(self.lat[q], self.lon[q], self.lat[near], self.lon[near])
        near = near[(d >= s.min_km) & (d <= s.max_km)]
        if s.strategy == "geo":
            return [int(r) for r in rng.permutation(near)[:need]]
        sims = self.index.sat[near] @ self._ground(q)  # hybrid: most similar within the neighbourhood
        return [int(r) for r in near[np.argsort(-sims, kind="stable")[:need]]]

    def _hard(self, q: int, need: int) -> list[int]:
        k = 4 * (need + 1)
        while True:
            _, rows = self.index.search(self._ground(q)[None], k)
            rows = rows[0][rows[0] >= 0]
            same = rows[self.split[rows] == self.split[q]]
            d = haversine_km(self.lat[q], self.lon[q], self.lat[same], self.lon[same])
            found = [int(r) for r in same[d >= self.spec.min_km]][:need]
            if len(found) == need or k >= len(self.index.meta):
                return found
            k *= 4

    def mine(self) -> tuple[list[Episode], MiningReport]:
        from scipy.spatial import cKDTree
        from tqdm import tqdm

        s = self.spec
        episodes: list[Episode] = []
        report = MiningReport()
        for split_id, split in enumerate(s.splits):
            pool = np.flatnonzero(self.split == split)
            if len(pool) == 0:
                continue
            rng = np.random.default_rng([s.seed, split_id])
            tree = cKDTree(_unit(self.lat[pool], self.lon[pool])) if s.strategy in ("geo", "hybrid") else None
            found: list[tuple[int, list[int]]] = []
            short: list[str] = []
            for q in tqdm(pool, desc=f"mine {split}", unit="query", disable=None):
                neg = self.negatives(int(q), pool, tree, rng)
                if len(neg) < s.k - 1:
                    short.append(self.index.meta[q]["key"])
                else:
                    found.append((int(q), neg))
            answers = rng.permutation(np.arange(len(found)) % s.k)  # equal counts per letter, seeded order
            for (q, neg), a in zip(found, answers, strict=True):
                cands = list(neg)
                cands.insert(int(a), q)
                episodes.append(Episode(split, q, cands, int(a)))
            report.episodes[split] = len(found)
            report.too_few_candidates[split] = short
            report.letters[split] = dict(sorted(Counter(string.ascii_uppercase[int(a)] for a in answers).items()))
            negs = [haversine_km(self.lat[q], self.lon[q], self.lat[n], self.lon[n]).mean() for q, n in found]
            report.mean_negative_km[split] = float(np.mean(negs)) if negs else float("nan")
        if not episodes:
            lat, lon = self.lat[:2000], self.lon[:2000]  # the spread of (up to 2,000 of) the places, km
            spread = float(haversine_km(lat[:, None], lon[:, None], lat[None], lon[None]).max())
            hint = "lower --k or widen the radius"
            if spread < s.min_km:  # city-scale data: every place is closer than min_km to every other
                hint = (
                    f"every place of this index lies within {spread:.1f} km of every other (city-scale data?), "
                    f"closer than --min-km {s.min_km:g}: try --min-km {max(spread / 50, 0.05):.2f} "
                    f"--max-km {spread:.1f} (docs/data.md, pairing episodes)"
                )
            raise Geor1Error(
                f"no episode could be mined: every query had fewer than K-1={s.k - 1} candidates "
                f"within the rules (strategy {s.strategy}, {s.min_km}..{s.max_km} km); {hint}"
            )
        return episodes, report

    def episode_meta(self, ep: Episode) -> dict[str, Any]:
        m = self.index.meta
        q = ep.query
        cands = []
        for r in ep.candidates:
            sim = float(self.index.sat[r] @ self.index.ground[q]) if self.index.ground is not None else None
            cands.append(
                {
                    "key": m[r]["key"],
                    "lat": m[r]["lat"],
                    "lon": m[r]["lon"],
                    "distance_km": round(float(haversine_km(self.lat[q], self.lon[q], self.lat[r], self.lon[r])), 3),
                    "similarity": None if sim is None else round(sim, 5),
                }
            )
        return {
            "lat": m[q]["lat"],
            "lon": m[q]["lon"],
            "city": m[q].get("city"),
            "country": m[q].get("country"),
            "split": ep.split,
            "source_key": m[q]["key"],
            "source": m[q].get("source"),  # the data set of the query (cot synthesize warns on real photos)
            **PairingTask().target_to_meta(PairingTarget(len(ep.candidates), ep.answer)),
            "candidates": cands,
            "mining": {k: v for k, v in asdict(self.spec).items() if k != "splits"},
        }


def write_episodes(miner: Miner, episodes: list[Episode], shards: str | Path, out: str | Path) -> dict[str, Any]:
    """Episode shards `<out>/<split>-%06d.tar`: `ground.jpg`, `cand0.jpg..cand{K-1}.jpg`, `json`."""
    from tqdm import tqdm

    from geor1.data.reader import iter_raw_samples, shard_urls
    from geor1.data.shards import ShardWriter, write_manifest

    stats = {}
    for split in sorted({e.split for e in episodes}):
        eps = [e for e in episodes if e.split == split]
        needed = {miner.index.meta[r]["key"] for e in eps for r in e.candidates}
        images: dict[str, dict[str, bytes]] = {}  # key -> {"ground.jpg", "sat.jpg"} (this split only)
        for raw in iter_raw_samples(shard_urls(shards, split)):
            if raw["__key__"] in needed:
                images[raw["__key__"]] = {k: raw[k] for k in ("ground.jpg", "sat.jpg") if k in raw}
        with ShardWriter(out, split) as writer:
            for ep in tqdm(eps, desc=f"write episodes {split}", unit="episode", disable=None):
                meta = miner.episode_meta(ep)
                qkey = meta["source_key"]
                files = {"ground.jpg": images[qkey]["ground.jpg"]}
                for i, c in enumerate(meta["candidates"]):
                    files[f"cand{i}.jpg"] = images[c["key"]]["sat.jpg"]
                writer.write_files(f"ep_{qkey}", files, meta)
        stats[split] = writer.close()
    write_manifest(
        out,
        stats,
        "episodes",
        "derived from the source shards; their licence applies",
        extra={"mining": asdict(miner.spec), "source_shards": str(shards)},
    )
    return stats


def mine_episodes(index: str | Path, shards: str | Path, out: str | Path, spec: MiningSpec) -> MiningReport:
    """Mine episodes from an index folder (built from `shards`) and write them as episode shards under `out`, with
    `mining_report.json` beside them (what `geor1 mine episodes` does)."""
    miner = Miner(SatIndex.load(index), spec)
    episodes, report = miner.mine()
    write_episodes(miner, episodes, shards, out)
    (Path(out) / "mining_report.json").write_text(json.dumps(asdict(report), indent=2))
    return report
