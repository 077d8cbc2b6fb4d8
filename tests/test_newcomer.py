"""A newcomer's trial as a test: one's own little data set in a non-GeoWorld layout (two cities in the VIGOR layout,
coordinates in file names, no split lists) through the whole pipeline, with the commands of docs/own_data.md, on
CPU with tiny models: convert with a held-out fraction, the cross-view encoder, its index, mining with city-scale
radii, CoT, SFT, GRPO, evaluation, export from the checkpoint alone, and predictions for photos without truth.

The commands are read from docs/own_data.md's code block and run in order, in-process, with only the lengths
overridden (steps, tokens), so the page says what works."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, random_image

from geor1.cli import main

# the lengths a CPU test can afford, appended to the page's commands (everything else runs as the page says)
SHORT = {
    "configs/retrieval/geoworld_tiny.yaml": [
        "--trainer.max_epochs",
        "1",
        "--data.init_args.batch_size",
        "8",
        "--data.init_args.ground_size",
        "[32, 64]",
        "--data.init_args.sat_size",
        "32",
    ],
    "configs/sft/geoworld_tiny.yaml": [
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--model.init_args.max_new_tokens",
        "4",
    ],
    "configs/grpo/geoworld_tiny.yaml": [
        "--trainer.max_steps",
        "2",
        "--trainer.limit_val_batches",
        "1",
        "--model.init_args.rollout.group_size",
        "2",
        "--model.init_args.rollout.max_new_tokens",
        "4",
        "--data.init_args.batch_size",
        "2",
    ],
}
SHORT_TOKENS = ["--max-new-tokens", "4"]


def _cities(root: Path, rng: np.random.Generator) -> None:
    """Two cities of one's own in the VIGOR layout: 12 panoramas each on a 0.01 degree grid (about 1 km apart), a
    satellite tile 20 m north of each, coordinates in the file names, no split lists."""
    for city, (lat0, lon0) in {"Lyon": (45.75, 4.85), "Nantes": (47.21, -1.55)}.items():
        for folder in ("panorama", "satellite"):
            (root / city / folder).mkdir(parents=True)
        for i in range(12):
            lat, lon = round(lat0 + 0.01 * (i % 4), 5), round(lon0 + 0.01 * (i // 4), 5)
            random_image(rng, 48, 96).save(root / city / "panorama" / f"p{i},{lat},{lon},.jpg")
            random_image(rng, 48, 48).save(root / city / "satellite" / f"satellite_{round(lat + 0.00018, 5)}_{lon}.png")


def page_commands() -> list[list[str]]:
    """The `geor1 ...` commands of docs/own_data.md's walk-through block, in order."""
    text = (REPO / "docs" / "own_data.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(# the walk-through.*?)```", text, re.S)
    assert block, "docs/own_data.md has no walk-through block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line.split(" #")[0])[1:] for line in lines if line.startswith("geor1 ")]


@pytest.mark.timeout(1200)
def test_a_newcomers_own_data_through_the_whole_pipeline(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.chdir(tmp_path)
    _cities(tmp_path / "my_cities", rng)
    for args in page_commands():
        config = next((a for a in args if a.startswith("configs/")), None)
        if config is not None:
            args = [str(REPO / a) if a == config else a for a in args] + SHORT.get(config, [])
        if args[:1] in (["geolocate"], ["eval"]):
            args += SHORT_TOKENS
        main(args)
    manifest = json.loads((tmp_path / "data/my_cities/manifest.json").read_text())
    counts = {s: manifest["splits"][s]["samples"] for s in ("train", "val", "test")}
    assert counts["train"] + counts["val"] == 12 and counts["val"] >= 1 and counts["test"] == 12, counts
    episodes = json.loads((tmp_path / "data/my_episodes/mining_report.json").read_text())
    assert sum(episodes["episodes"].values()) > 0
    for run in ("runs/my_sft", "runs/my_grpo"):
        assert (tmp_path / run / "model" / "config.json").is_file()
    metrics = json.loads((tmp_path / "runs/my_eval/metrics.json").read_text())
    assert metrics["n"] == 12  # Nantes, the held-out test city
    with open(tmp_path / "runs/my_photos/predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and all(r["how"] or r["reason"] for r in rows)
    assert (tmp_path / "models/my_grpo/config.json").is_file()
