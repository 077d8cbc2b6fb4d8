"""`geor1 index build|search` and `geor1 mine episodes`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="FAISS index of satellite embeddings: build, search")
    isub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)
    b = isub.add_parser("build", help="embed every tile of a shard folder with a trained encoder and index it")
    b.add_argument("--ckpt", required=True, help="ContrastiveModule checkpoint (geor1 fit configs/retrieval/...)")
    b.add_argument("--shards", required=True, help="folder of pair shards")
    b.add_argument("--out", required=True, help="index folder to write")
    b.add_argument("--type", choices=["flat", "ivf", "hnsw"], default="flat")
    b.add_argument(
        "--splits", default=None, help="comma-separated splits to index (default: those of train,val,test present)"
    )
    b.add_argument("--nlist", type=int, default=None, help="IVF cells (default ~4*sqrt(N))")
    b.add_argument("--nprobe", type=int, default=16, help="IVF cells probed per query")
    b.add_argument("--m", type=int, default=32, help="HNSW links per node")
    b.add_argument("--ef-search", type=int, default=64, help="HNSW search breadth")
    b.add_argument("--batch-size", type=int, default=128)
    b.set_defaults(handler=_build)
    s = isub.add_parser("search", help="the tiles most similar to a sample's ground view, or to a photo's")
    s.add_argument("--index", required=True)
    q = s.add_mutually_exclusive_group(required=True)
    q.add_argument("--key", help="key of a sample in the index (its ground embedding is the query)")
    q.add_argument("--photo", help="a ground-level photo, embedded with the index's encoder (or --ckpt)")
    s.add_argument("--ckpt", default=None, help="encoder checkpoint for --photo (default: the index's own)")
    s.add_argument("--k", type=int, default=10)
    s.set_defaults(handler=_search)

    m = sub.add_parser("mine", help="mine hard-negative pairing episodes")
    msub = m.add_subparsers(dest="mine_command", metavar="ACTION", required=True)
    e = msub.add_parser("episodes", help="write episode shards: ground + K candidate tiles + answer")
    e.add_argument("--index", required=True, help="index folder from `geor1 index build`")
    e.add_argument("--shards", required=True, help="the pair shards the index was built from")
    e.add_argument("--out", required=True)
    e.add_argument("--k", type=int, default=4, help="candidates per episode (1 true + K-1 negatives)")
    e.add_argument("--strategy", choices=["random", "geo", "hard", "hybrid"], default="hybrid")
    e.add_argument("--min-km", type=float, default=150.0, help="no negative closer than this to the truth")
    e.add_argument("--max-km", type=float, default=2000.0, help="neighbourhood radius (geo, hybrid)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument(
        "--splits",
        default=None,
        help="comma-separated splits to mine (default: train,val,test; a split the index lacks gives no episode)",
    )
    e.set_defaults(handler=_mine)


def _splits(given: str | None, shards: str) -> tuple[str, ...]:
    """The named splits, or by default those of train, val and test that `shards` has (a data set of one's own may
    have no val split); a one-line error when it has none of them."""
    from geor1 import Geor1Error
    from geor1.data.reader import shard_urls

    if given is not None:
        return tuple(s for s in given.split(",") if s)
    present = tuple(s for s in ("train", "val", "test") if shard_urls(shards, s))
    if not present:
        raise Geor1Error(f"{shards} has no train, val or test shards (name other splits with --splits)")
    return present


def _build(ns: argparse.Namespace) -> None:
    from geor1.retrieval.embed import check_checkpoint
    from geor1.retrieval.index import IndexSpec, build_index

    check_checkpoint(ns.ckpt)  # before the data: the first thing that is missing is named
    spec = IndexSpec(type=ns.type, nlist=ns.nlist, nprobe=ns.nprobe, m=ns.m, ef_search=ns.ef_search)
    index = build_index(ns.ckpt, ns.shards, ns.out, spec, _splits(ns.splits, ns.shards), ns.batch_size)
    print(f"{ns.type} index of {len(index.meta)} tiles ({index.sat.shape[1]}-d) written to {ns.out}")


def _search(ns: argparse.Namespace) -> None:
    from geor1 import Geor1Error
    from geor1.geo import haversine_km
    from geor1.retrieval.index import SatIndex

    index = SatIndex.load(ns.index)
    if ns.photo:
        _search_photo(ns, index)
        return
    if ns.key not in index.row_of_key:
        raise Geor1Error(f"key '{ns.key}' is not in index {ns.index}")
    if index.ground is None:
        raise Geor1Error(f"index {ns.index} has no ground embeddings")
    q = index.row_of_key[ns.key]
    scores, rows = index.search(index.ground[q][None], ns.k)
    mq = index.meta[q]
    print(f"query {ns.key} ({mq.get('city')}, {mq.get('country')})")
    for rank, (score, r) in enumerate(zip(scores[0], rows[0], strict=True), start=1):
        m = index.meta[r]
        d = float(haversine_km(mq["lat"], mq["lon"], m["lat"], m["lon"]))
        mark = "  <- true tile" if r == q else ""
        print(f"{rank:>3}. {m['key']}  {score:.3f}  {d:8.1f} km  {m.get('city')}, {m.get('country')}{mark}")


def _search_photo(ns: argparse.Namespace, index) -> None:
    """The tiles most similar to a photo's ground embedding: the photo resized to the index's ground size and embedded
    by its encoder (or --ckpt); each tile with its place (the photo has no truth to measure against)."""
    import torch

    from geor1 import Geor1Error
    from geor1.data.datamodule import normalise
    from geor1.data.schema import SampleError, decode_image_tensor
    from geor1.retrieval.embed import load_contrastive

    ckpt = ns.ckpt or index.info.get("ckpt")
    if not ckpt:
        raise Geor1Error(f"index {ns.index} does not name its encoder checkpoint: give --ckpt")
    photo = Path(ns.photo)
    if not photo.is_file():
        raise Geor1Error(f"photo {photo} not found")
    module, _ = load_contrastive(ckpt)
    height, width = (int(v) for v in index.info.get("ground_size") or (128, 192))
    try:  # decoded and resized as `index build` decoded the indexed ground views
        hwc = decode_image_tensor(photo.name, "photo", photo.read_bytes(), (height, width))
    except SampleError as e:
        raise Geor1Error(f"cannot read photo {photo}: {e}") from None
    image = hwc[None].permute(0, 3, 1, 2)  # [1, 3, H, W] uint8
    with torch.no_grad():
        query = module.encoder.embed_ground(normalise(image)).float().numpy()  # [1, D]
    scores, rows = index.search(query, ns.k)
    print(f"query {ns.photo}")
    for rank, (score, r) in enumerate(zip(scores[0], rows[0], strict=True), start=1):
        m = index.meta[r]
        print(
            f"{rank:>3}. {m['key']}  {score:.3f}  ({m['lat']:.4f}, {m['lon']:.4f})  {m.get('city')}, {m.get('country')}"
        )


def _mine(ns: argparse.Namespace) -> None:
    from geor1.retrieval.mining import MiningSpec, mine_episodes

    spec = MiningSpec(
        k=ns.k,
        strategy=ns.strategy,
        min_km=ns.min_km,
        max_km=ns.max_km,
        seed=ns.seed,
        splits=tuple(s for s in (ns.splits or "train,val,test").split(",") if s),  # a split the index lacks: none
    )
    report = mine_episodes(ns.index, ns.shards, ns.out, spec)
    for split, n in report.episodes.items():
        short = len(report.too_few_candidates[split])
        print(
            f"{split:>6}: {n} episodes, letters {report.letters[split]}, mean negative distance "
            f"{report.mean_negative_km[split]:.0f} km" + (f", {short} queries with too few candidates" if short else "")
        )
