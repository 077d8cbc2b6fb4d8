"""Samples/s through PairShardDataModule (num_workers 0..2, PIL pairs and tensors) next to the single-process
decode bound (decoding the same JPEGs from memory with PIL, as a plain consumer would), printed as a table with
ratios. The loader reads the shards through webdataset's pipeline and decodes JPEGs with libjpeg-turbo through
torchvision (and at reduced size for small tensor targets), so a ratio above 1 is possible. Targets (issue 16):
>= 0.9 for item=pair with 0 workers and item=tensors with 2 workers on 2 cores.

    python benchmarks/perf_loader.py                       # builds a GeoWorld of 2000 places in a temp folder
    python benchmarks/perf_loader.py --shards data/geoworld --out runs/bench
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from _report import write_report
from PIL import Image

from geor1.data.datamodule import PairShardDataModule
from geor1.data.reader import iter_raw_samples, split_shards


def decode_bound(shards: list[Path]) -> tuple[float, int]:
    """Samples/s of decoding ground + sat JPEGs already in memory, one process."""
    raws = list(iter_raw_samples(shards))
    t = time.perf_counter()
    for r in raws:
        for ext in ("ground.jpg", "sat.jpg"):
            Image.open(io.BytesIO(r[ext])).convert("RGB").load()
    return len(raws) / (time.perf_counter() - t), len(raws)


def loader_rate(root: str, workers: int, item: str, batch_size: int = 32) -> float:
    dm = PairShardDataModule(root, item=item, batch_size=batch_size, num_workers=workers, shuffle_buffer=256)
    n = 0
    t = time.perf_counter()
    for batch in dm.train_dataloader():
        n += len(batch["key"]) if isinstance(batch, dict) else len(batch)
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", default=None, help="GeoWorld-style shard folder (default: build one)")
    ap.add_argument("--num-train", type=int, default=2000)
    ap.add_argument("--out", default=None, help="folder for perf_loader.json / .md")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="measure every row (the bound included) this many times and keep the best: on a small machine one "
        "timing swings by 10-15%% from run to run",
    )
    args = ap.parse_args()
    tmp = None
    root = args.shards
    if root is None:
        from geor1.data.geoworld import build_geoworld

        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
        build_geoworld(root, args.num_train, 10, 10, seed=0, max_count=250)
    shards = split_shards(root, "train")
    n = 0
    bound = 0.0
    for _ in range(args.repeats):
        rate, n = decode_bound(shards)
        bound = max(bound, rate)
    rows = [{"pipeline": "decode bound (1 process, JPEGs in memory)", "workers": 0, "samples_per_s": bound}]
    for item in ("pair", "tensors"):
        for workers in (0, 1, 2):
            loader_rate(root, workers, item)  # warm the page cache
            rows.append(
                {
                    "pipeline": f"PairShardDataModule item={item}",
                    "workers": workers,
                    "samples_per_s": max(loader_rate(root, workers, item) for _ in range(args.repeats)),
                }
            )
    lines = [
        f"perf_loader: {n} ground+sat pairs in {len(shards)} shards, best of {args.repeats} runs per row",
        "| pipeline | workers | samples/s | ratio to decode bound |",
        "|---|---|---|---|",
    ]
    for r in rows:
        r["ratio"] = r["samples_per_s"] / bound
        lines.append(f"| {r['pipeline']} | {r['workers']} | {r['samples_per_s']:.0f} | {r['ratio']:.2f} |")
    print("\n".join(lines))
    write_report(args.out, "perf_loader", rows, lines)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
