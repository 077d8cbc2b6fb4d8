"""The one geodesic function: hand-computed distances (antipodes, poles, the dateline, identical points)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geor1.geo import EARTH_RADIUS_KM, check_lat_lon, destination, geoscore, haversine_km

HALF = math.pi * EARTH_RADIUS_KM  # 20015.0868 km


@pytest.mark.parametrize(
    "a, b, km",
    [
        ((0.0, 0.0), (0.0, 0.0), 0.0),
        ((0.0, 0.0), (0.0, 180.0), HALF),  # antipodes on the equator
        ((90.0, 0.0), (-90.0, 0.0), HALF),  # pole to pole
        ((90.0, 10.0), (90.0, -170.0), 0.0),  # the same pole, any longitude
        ((0.0, 179.5), (0.0, -179.5), math.radians(1.0) * EARTH_RADIUS_KM),  # across the dateline: 1 degree
        ((0.0, 0.0), (1.0, 0.0), math.radians(1.0) * EARTH_RADIUS_KM),
    ],
)
def test_haversine_by_hand(a, b, km):
    assert float(haversine_km(*a, *b)) == pytest.approx(km, abs=1e-6)
    got = haversine_km(torch.tensor([a[0]]), torch.tensor([a[1]]), torch.tensor([b[0]]), torch.tensor([b[1]]))
    assert float(got[0]) == pytest.approx(km, abs=1e-6)


def test_destination_inverts_haversine():
    lat, lon = destination(np.array(48.85), np.array(2.35), np.radians(np.array(73.0)), np.array(0.05))
    assert float(haversine_km(48.85, 2.35, lat, lon)) == pytest.approx(0.05 * EARTH_RADIUS_KM, rel=1e-9)


def test_geoscore_and_validation():
    assert float(geoscore(0.0)) == 5000.0 and float(geoscore(1492.7)) == pytest.approx(5000 / math.e)
    assert check_lat_lon(10.0, 20.0) is None
    assert "finite" in check_lat_lon(float("nan"), 0.0) and "lon" in check_lat_lon(0.0, 181.0)
    assert "number" in check_lat_lon(True, 0.0)
