"""Writers keep their bytes: the shards and manifests that `geor1 data world` (build_geoworld) and a converter write
are compared, by sha256, with the values the code wrote before the streaming path moved to webdataset (issue 16).

The expected digests were computed from the committed writers with this Pillow/libjpeg build (the JPEG encoder's
output is part of the bytes): a change of either shows here first, a change of the writers always does."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from geor1.data.convert import csv_rows, write_rows
from geor1.data.geoworld import build_geoworld

GEOWORLD = {
    "manifest.json": "8bf8860ffd34054132b7ba5657a389c7bf94f3e186c0bb2fb1ba88cc3028d385",
    "test-000000.tar": "efd96474e809bd2e5277376bde0d022a28363ae33f85ab5b00d8bf42f105efb8",
    "train-000000.tar": "c0b9620e5ae7c8d42614011fbfc7d5f0038e91ffb5d0601a7963268bd2fd73f5",
    "train-000001.tar": "8f6a8fe053b3ecaaf6f1624b246a078cca5fe2752643cfc7b7c3647f41440468",
    "val-000000.tar": "bafd7f83f5bc49fbd7075256c0ca04d2c1ca0c108fa2c2530b11e509e9f0ad0f",
}
CONVERTED = {
    "manifest.json": "298e7361c44fad4062717ba08bc9a7e20a55888172db8e8bce3401b1c3d4dbf5",
    "test-000000.tar": "d1745d31af77eede21f58899def0e8c7c7c9c3b309e80b6463f7f553fa64ab16",
}


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.suffix in (".tar", ".json")
    }


def test_geoworld_writes_the_same_bytes(tmp_path):
    world = build_geoworld(tmp_path / "gw", num_train=5, num_val=2, num_test=2, seed=3, max_count=3)
    assert _digests(world) == GEOWORLD


def test_converter_writes_the_same_bytes(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    with open(tmp_path / "places.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "LAT", "LON"])
        for i, (lat, lon) in enumerate([(48.8566, 2.3522), (40.7128, -74.006), (-33.87, 151.21)]):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "img" / f"p{i}.png")
            w.writerow([f"p{i}.png", lat, lon])
    write_rows(csv_rows(tmp_path / "places.csv", tmp_path / "img"), tmp_path / "out", "probe", "CC0")
    assert _digests(tmp_path / "out") == CONVERTED
