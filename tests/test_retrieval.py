"""FAISS indexes against brute force, index round trip, mining rules recomputed from metadata, the InfoNCE maths,
and the encoder -> index -> episodes path end to end on a tiny GeoWorld."""

from __future__ import annotations

import json
import math
import string
from collections import Counter

import numpy as np
import pytest
import torch
import webdataset as wds

from geor1.geo import haversine_km
from geor1.metrics.retrieval import recall_at_k
from geor1.objectives.contrastive import info_nce
from geor1.retrieval.index import IndexSpec, SatIndex, build_faiss_index
from geor1.retrieval.mining import Miner, MiningSpec


def _clustered(n: int, d: int, clusters: int, seed: int) -> np.ndarray:
    """Realistic-ish embeddings: unit vectors around cluster centres (approximate indexes are judged on these)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d))
    x = centres[rng.integers(clusters, size=n)] + 0.35 * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_flat_search_equals_torch_topk():
    data = _clustered(3050, 32, 30, 0)
    x, q = data[:3000], data[3000:]
    scores, rows = build_faiss_index(x, IndexSpec("flat")).search(q, 10)
    ref = torch.topk(torch.from_numpy(q) @ torch.from_numpy(x).T, 10)
    np.testing.assert_allclose(scores, ref.values.numpy(), rtol=1e-5, atol=1e-5)
    assert (rows == ref.indices.numpy()).mean() > 0.999  # ties may swap equal-score neighbours


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_recall_at_10(kind):
    data = _clustered(20200, 64, 200, 2)
    x, q = data[:20000], data[20000:]  # queries from the same distribution, not in the index
    _, exact = build_faiss_index(x, IndexSpec("flat")).search(q, 10)
    _, approx = build_faiss_index(x, IndexSpec(kind, nprobe=16, ef_search=64)).search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, recall


def _world(n: int = 300, seed: int = 0, d: int = 16) -> SatIndex:
    rng = np.random.default_rng(seed)
    lat = np.degrees(np.arcsin(rng.uniform(-0.8, 0.9, n)))
    lon = rng.uniform(-180, 180, n)
    splits = rng.choice(["train", "val", "test"], n, p=[0.6, 0.2, 0.2])
    meta = [{"key": f"k{i}", "lat": float(lat[i]), "lon": float(lon[i]), "split": str(splits[i])} for i in range(n)]
    sat = _clustered(n, d, 10, seed)
    ground = sat + 0.3 * _clustered(n, d, 10, seed + 1)
    ground /= np.linalg.norm(ground, axis=1, keepdims=True)
    return SatIndex.build(sat, ground, meta, IndexSpec("flat"))


def test_index_save_load_round_trip(tmp_path):
    index = _world()
    index.save(tmp_path / "idx")
    back = SatIndex.load(tmp_path / "idx")
    assert back.meta == index.meta and np.array_equal(back.sat, index.sat) and np.array_equal(back.ground, index.ground)
    np.testing.assert_array_equal(back.search(index.ground[:5], 7)[1], index.search(index.ground[:5], 7)[1])
    from geor1 import Geor1Error

    with pytest.raises(Geor1Error, match="not a geor1 index folder"):
        SatIndex.load(tmp_path)


@pytest.mark.parametrize("strategy", ["random", "geo", "hard", "hybrid"])
def test_mined_episodes_follow_every_rule(strategy):
    index = _world()
    spec = MiningSpec(k=4, strategy=strategy, min_km=300.0, max_km=4000.0, seed=5)
    episodes, report = Miner(index, spec).mine()
    again, _ = Miner(index, MiningSpec(**{**spec.__dict__})).mine()
    assert [(e.query, e.candidates, e.answer) for e in episodes] == [(e.query, e.candidates, e.answer) for e in again]
    m = index.meta
    for split in ("train", "val", "test"):
        eps = [e for e in episodes if e.split == split]
        queries = {m[r]["key"] for r in range(len(m)) if m[r]["split"] == split}
        assert len(eps) + len(report.too_few_candidates[split]) == len(queries)  # every query accounted for
        counts = Counter(e.answer for e in eps)
        assert max(counts.values()) - min(counts.values()) <= 1  # letters balanced
    for e in episodes:
        q = e.query
        assert e.candidates[e.answer] == q and len(set(e.candidates)) == 4
        negatives = [r for r in e.candidates if r != q]
        for r in negatives:
            assert m[r]["split"] == m[q]["split"]  # no leak across splits
            d = haversine_km(m[q]["lat"], m[q]["lon"], m[r]["lat"], m[r]["lon"])
            assert d >= 300.0
            if strategy in ("geo", "hybrid"):
                assert d <= 4000.0
        if strategy in ("hard", "hybrid"):  # the most similar eligible tiles, by brute force
            eligible = [
                r
                for r in range(len(m))
                if r != q
                and m[r]["split"] == m[q]["split"]
                and 300.0
                <= haversine_km(m[q]["lat"], m[q]["lon"], m[r]["lat"], m[r]["lon"])
                <= (4000.0 if strategy == "hybrid" else math.inf)
            ]
            sims = {r: float(index.sat[r] @ index.ground[q]) for r in eligible}
            best = sorted(eligible, key=lambda r: -sims[r])[:3]
            assert sorted(sims[r] for r in negatives) == pytest.approx(sorted(sims[r] for r in best), abs=1e-6)


def test_mining_errors():
    from geor1 import Geor1Error

    with pytest.raises(Geor1Error, match="no episode could be mined"):
        Miner(_world(20), MiningSpec(k=8, strategy="geo", min_km=10.0, max_km=20.0)).mine()
    with pytest.raises(Geor1Error, match="--k must be"):
        Miner(_world(20), MiningSpec(k=1))


def test_mining_city_scale_data_with_world_radii_names_radii_that_fit():
    """Places within a few km of each other (a city) and the default 150 km minimum: the error measures the spread
    and proposes radii, and mining with them works."""
    import re

    from geor1 import Geor1Error

    index = _world(60)
    for i, m in enumerate(index.meta):  # every place within ~3 km of (48.85, 2.35)
        m["lat"], m["lon"] = 48.85 + 0.01 * (i % 3), 2.35 + 0.01 * (i % 4)
    with pytest.raises(Geor1Error, match="city-scale data") as err:
        Miner(index, MiningSpec(k=2, strategy="geo", min_km=150.0, max_km=2000.0)).mine()
    lo, hi = map(float, re.search(r"try --min-km ([\d.]+) --max-km ([\d.]+)", str(err.value)).groups())
    episodes, _ = Miner(index, MiningSpec(k=2, strategy="geo", min_km=lo, max_km=hi)).mine()
    assert episodes


def test_info_nce_and_recall_by_hand():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(10.0)
    # row 0: logits [10, 6]; row 1: [0, 8]; columns: [10, 0] and [6, 8]
    lse = lambda a, b: math.log(math.exp(a) + math.exp(b))
    expected = 0.5 * ((lse(10, 6) - 10 + lse(0, 8) - 8) / 2 + (lse(10, 0) - 10 + lse(6, 8) - 8) / 2)
    assert float(info_nce(g, s, scale)) == pytest.approx(expected, rel=1e-6)
    q = torch.eye(3)
    # query 0 ranks its own tile first; queries 1 and 2 each have one other tile more similar than their own
    gallery = torch.tensor([[1.0, 0, 0], [0, 0.5, 0.9], [0.2, 0.9, 0.1]])
    assert recall_at_k(q, gallery, (1, 2)) == {1: pytest.approx(1 / 3), 2: pytest.approx(1.0)}


def test_encoder_index_mining_end_to_end(tmp_path, capsys):
    import lightning as L

    from geor1.cli import main
    from geor1.data.datamodule import PairShardDataModule
    from geor1.data.geoworld import build_geoworld
    from geor1.objectives.contrastive import ContrastiveModule

    world = build_geoworld(tmp_path / "gw", num_train=30, num_val=12, num_test=12, seed=2)
    dm = PairShardDataModule(str(world), item="tensors", ground_size=(48, 64), sat_size=48, batch_size=8)
    module = ContrastiveModule(backbone="regnetx_002", embed_dim=32)
    trainer = L.Trainer(
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        accelerator="cpu",
        default_root_dir=tmp_path,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    (metrics,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert 0.0 <= metrics["val/recall@1"] <= metrics["val/recall@5"] <= metrics["val/recall@10"] <= 1.0
    ckpt = tmp_path / "enc.ckpt"
    trainer.save_checkpoint(ckpt)
    main(
        [
            "index",
            "build",
            "--ckpt",
            str(ckpt),
            "--shards",
            str(world),
            "--out",
            str(tmp_path / "idx"),
            "--type",
            "flat",
        ]
    )
    main(
        [
            "mine",
            "episodes",
            "--index",
            str(tmp_path / "idx"),
            "--shards",
            str(world),
            "--out",
            str(tmp_path / "eps"),
            "--k",
            "3",
            "--strategy",
            "hybrid",
            "--min-km",
            "100",
            "--max-km",
            "20000",
        ]
    )
    urls = sorted(str(p) for p in (tmp_path / "eps").glob("*.tar"))
    episodes = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
    assert len(episodes) == 54
    for ep in episodes:
        meta = ep["json"]
        assert meta["k"] == 3 and meta["answer_letter"] == string.ascii_uppercase[meta["answer"]]
        assert meta["candidates"][meta["answer"]]["key"] == meta["source_key"]
        assert all(meta["split"] in c["key"] for c in meta["candidates"])  # GeoWorld keys carry their split
        assert all(c["distance_km"] >= 100 for i, c in enumerate(meta["candidates"]) if i != meta["answer"])
        assert ep["cand0.jpg"].size == (128, 128) and ep["ground.jpg"].size == (192, 128)
    report = json.loads((tmp_path / "eps" / "mining_report.json").read_text())
    assert report["episodes"] == {"train": 30, "val": 12, "test": 12}
    # index search by a photo: the JPEG of an indexed ground view gives that view's own ranking (same decoding)
    sample = next(iter(wds.WebDataset(sorted(str(p) for p in world.glob("test-*.tar")), shardshuffle=False)))
    (tmp_path / "photo.jpg").write_bytes(sample["ground.jpg"])
    capsys.readouterr()
    main(["index", "search", "--index", str(tmp_path / "idx"), "--key", sample["__key__"], "--k", "3"])
    by_key = capsys.readouterr().out.splitlines()[1:]
    main(["index", "search", "--index", str(tmp_path / "idx"), "--photo", str(tmp_path / "photo.jpg"), "--k", "3"])
    by_photo = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[1:3] for line in by_photo] == [line.split()[1:3] for line in by_key]  # keys and scores
    # geor1 eval retrieval: the test ground views against the whole index, checked against brute force
    main(
        ["eval", "retrieval", "--index", str(tmp_path / "idx"), "--shards", str(world), "--out", str(tmp_path / "ret")]
    )
    got = json.loads((tmp_path / "ret" / "metrics.json").read_text())
    index = SatIndex.load(tmp_path / "idx")
    rows = [i for i, m in enumerate(index.meta) if m["split"] == "test"]
    sims = torch.from_numpy(index.ground[rows]) @ torch.from_numpy(index.sat).T  # [12, 54]
    rank = (sims > sims[torch.arange(len(rows)), rows][:, None]).sum(1)  # tiles scoring above the true one
    assert got["queries"] == 12 and got["gallery"] == 54 and got["queries_without_tile"] == 0
    for k in (1, 5, 10):
        assert got[f"recall@{k}"] == pytest.approx(float((rank < k).float().mean()))


def test_index_and_mining_default_to_the_splits_present(tmp_path):
    """A data set of one's own with no val split: `index build` takes the splits it has (mining mines the splits of
    the index, an absent one giving no episode)."""
    import shutil

    from geor1 import Geor1Error
    from geor1.data.geoworld import build_geoworld
    from geor1.retrieval.commands import _splits

    world = build_geoworld(tmp_path / "gw", num_train=2, num_val=2, num_test=2, seed=1)
    assert _splits(None, str(world)) == ("train", "val", "test")
    mine = tmp_path / "mine"
    mine.mkdir()
    for shard in list(world.glob("train-*.tar")) + list(world.glob("test-*.tar")):
        shutil.copy(shard, mine / shard.name)
    assert _splits(None, str(mine)) == ("train", "test")
    assert _splits("train", str(mine)) == ("train",)
    (tmp_path / "empty").mkdir()
    with pytest.raises(Geor1Error, match="has no train, val or test shards"):
        _splits(None, str(tmp_path / "empty"))
