"""FAISS vs brute force for satellite-embedding search: build time, queries/s and recall@10 (against exact search)
for flat, IVF and HNSW indexes and a torch matmul+topk baseline, at 100k and 1M vectors (256-d), printed as a
table with ratios to brute force.

Data: unit vectors around 1,000 cluster centres (embeddings of real tiles are clustered; approximate indexes are
meaningless on structureless Gaussian noise). Queries come from the same distribution and are not in the index.

    python benchmarks/perf_faiss.py                              # 100k and 1M, 256-d, 1,000 queries
    python benchmarks/perf_faiss.py --sizes 100000 --out runs/bench
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from _report import write_report

from geor1.retrieval.index import IndexSpec, build_faiss_index


def clustered(n: int, d: int, clusters: int, rng: np.random.Generator, noise: float = 0.6) -> np.ndarray:
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 100_000):  # in chunks: bounded memory at 1M+
        m = min(100_000, n - start)
        x = centres[rng.integers(clusters, size=m)] + noise * rng.standard_normal((m, d), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def torch_topk(x: torch.Tensor, q: torch.Tensor, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact top-k by inner product, the database in chunks (what a plain PyTorch user would write)."""
    best_s, best_i = None, None
    for start in range(0, len(x), chunk):
        s = q @ x[start : start + chunk].T
        top = torch.topk(s, min(k, s.shape[1]), dim=1)
        idx = top.indices + start
        if best_s is None:
            best_s, best_i = top.values, idx
        else:
            cat_s, cat_i = torch.cat([best_s, top.values], 1), torch.cat([best_i, idx], 1)
            sel = torch.topk(cat_s, k, dim=1)
            best_s, best_i = sel.values, torch.gather(cat_i, 1, sel.indices)
    return best_i.numpy()


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


def run(n: int, d: int, nq: int, k: int, rng: np.random.Generator, hnsw_max: int) -> list[dict]:
    data = clustered(n + nq, d, 1000, rng)
    x, q = data[:n], data[n:]
    xt, qt = torch.from_numpy(x), torch.from_numpy(q)
    t = time.perf_counter()
    exact = torch_topk(xt, qt, k)
    brute_s = time.perf_counter() - t
    rows = [
        {"n": n, "method": "torch matmul+topk (brute force)", "build_s": 0.0, "qps": nq / brute_s, "recall@10": 1.0}
    ]
    specs = [
        ("faiss flat (exact)", IndexSpec("flat")),
        ("faiss IVF nlist=4*sqrt(N) nprobe=16", IndexSpec("ivf", nprobe=16)),
        ("faiss IVF nlist=4*sqrt(N) nprobe=32", IndexSpec("ivf", nprobe=32)),
    ]
    if n <= hnsw_max:
        specs.append(("faiss HNSW M=32 efSearch=64", IndexSpec("hnsw", m=32, ef_construction=80, ef_search=64)))
    for name, spec in specs:
        t = time.perf_counter()
        index = build_faiss_index(x, spec)
        build = time.perf_counter() - t
        index.search(q[:10], k)  # warm-up
        t = time.perf_counter()
        _, found = index.search(q, k)
        rows.append(
            {
                "n": n,
                "method": name,
                "build_s": build,
                "qps": nq / (time.perf_counter() - t),
                "recall@10": recall(found, exact),
            }
        )
        del index
    for r in rows:
        r["speedup_vs_brute"] = r["qps"] / rows[0]["qps"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--hnsw-max", type=int, default=1_000_000, help="skip HNSW above this size (slow to build)")
    ap.add_argument("--out", default=None, help="folder for perf_faiss.json / .md")
    args = ap.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows += run(n, args.dim, args.queries, 10, rng, args.hnsw_max)
    lines = [
        f"perf_faiss: {args.dim}-d, {args.queries} queries, k=10, {torch.get_num_threads()} threads, "
        f"faiss {faiss.__version__}, GPUs seen by faiss: {faiss.get_num_gpus()}",
        "| vectors | method | build s | queries/s | x brute force | recall@10 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']:,} | {r['method']} | {r['build_s']:.1f} | {r['qps']:.0f} | "
            f"{r['speedup_vs_brute']:.1f} | {r['recall@10']:.3f} |"
        )
    print("\n".join(lines))
    write_report(args.out, "perf_faiss", rows, lines)


if __name__ == "__main__":
    main()
