"""`geor1 data inspect PATH`: counts per split, a schema check of every sample, corrupt-sample counts, a PNG grid."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from geor1.data.reader import expand_spec, iter_raw_samples
from geor1.data.schema import PairSample, SampleError, decode_pair

log = logging.getLogger(__name__)


def _shard_name(url: str) -> str:
    """The file name of a shard path or URL (`pipe:cat a/train-000001.tar` -> `train-000001.tar`)."""
    return url.split("?", 1)[0].rstrip(" -").rsplit("/", 1)[-1].split()[-1]


def inspect_shards(root: str | Path, grid_png: str | Path | None = None, grid_count: int = 8) -> dict[str, Any]:
    """Read every shard under `root` (a folder of `<split>-*.tar`, or a WebDataset URL spec of shards named
    `<split>-*`) and check every sample."""
    is_folder = Path(root).is_dir()
    shards = [str(p) for p in sorted(Path(root).glob("*.tar"))] if is_folder else expand_spec(str(root))
    if not shards:
        raise FileNotFoundError(f"no .tar shards in {root}")
    report: dict[str, Any] = {"root": str(root), "splits": {}, "corrupt": [], "broken_shards": []}
    examples: list[PairSample] = []
    for shard in shards:
        name = _shard_name(shard)
        split = name.rsplit("-", 1)[0]
        counts = report["splits"].setdefault(split, Counter())
        for raw in iter_raw_samples([shard], on_broken_shard=report["broken_shards"].append):
            try:
                sample = decode_pair(raw, require_sat=False)
            except SampleError as e:
                counts["corrupt"] += 1
                report["corrupt"].append({"shard": name, "key": e.key, "field": e.field, "reason": e.reason})
                continue
            counts["valid"] += 1
            counts["ground_only"] += sample.sat is None
            if len(examples) < grid_count and sample.sat is not None:
                examples.append(sample)
    report["splits"] = {k: dict(v) for k, v in report["splits"].items()}
    manifest = Path(root) / "manifest.json"
    if is_folder and manifest.exists():
        declared = json.loads(manifest.read_text()).get("splits", {})
        report["manifest_mismatch"] = {
            s: {"manifest": d.get("samples"), "valid": report["splits"].get(s, {}).get("valid", 0)}
            for s, d in declared.items()
            if d.get("samples") != report["splits"].get(s, {}).get("valid", 0)
        }
    if grid_png is not None and examples:
        pair_grid(examples).save(grid_png)
        report["grid_png"] = str(grid_png)
    return report


def pair_grid(samples: list[PairSample], height: int = 128, columns: int = 2) -> Image.Image:
    """Ground | satellite pairs in a grid, each captioned with its place."""
    cells = []
    for s in samples:
        g = s.ground.resize((round(s.ground.width * height / s.ground.height), height))
        # a sample without a satellite view (converted benchmarks) gets a blank tile
        t = s.sat.resize((height, height)) if s.sat is not None else Image.new("RGB", (height, height), "lightgrey")
        cell = Image.new("RGB", (g.width + t.width + 6, height + 18), "white")
        cell.paste(g, (0, 18))
        cell.paste(t, (g.width + 6, 18))
        caption = f"{s.meta.get('city', '?')}, {s.meta.get('country', '?')} ({s.meta['lat']:.2f}, {s.meta['lon']:.2f})"
        ImageDraw.Draw(cell).text((2, 3), caption, fill="black")
        cells.append(cell)
    w, h = max(c.width for c in cells), max(c.height for c in cells)
    rows = (len(cells) + columns - 1) // columns
    grid = Image.new("RGB", (columns * (w + 8), rows * (h + 8)), "white")
    for i, c in enumerate(cells):
        grid.paste(c, ((i % columns) * (w + 8), (i // columns) * (h + 8)))
    return grid
