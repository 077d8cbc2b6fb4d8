"""The one geodesic function of geor1, coordinate validation and GeoScore.

Conventions (stated wherever figures are reported): haversine great-circle distance on a sphere of radius
6371.0088 km (the IUGG mean Earth radius); thresholds count `d <= threshold`; GeoScore = 5000 * exp(-d / 1492.7 km),
unrounded.
"""

from __future__ import annotations

import math

import numpy as np

EARTH_RADIUS_KM = 6371.0088
GEOSCORE_SCALE_KM = 1492.7


def haversine_km(lat1, lon1, lat2, lon2):
    """Great-circle distance in km between points given in degrees; works on floats, numpy arrays and torch tensors
    (broadcasting).

    >>> round(float(haversine_km(0.0, 0.0, 0.0, 180.0)), 3)  # half the circumference
    20015.114
    """
    if hasattr(lat1, "deg2rad") or hasattr(lat2, "deg2rad"):  # torch
        import torch

        lat1, lon1, lat2, lon2 = (torch.as_tensor(x, dtype=torch.float64) for x in (lat1, lon1, lat2, lon2))
        p1, p2 = torch.deg2rad(lat1), torch.deg2rad(lat2)
        dp, dl = p2 - p1, torch.deg2rad(lon2 - lon1)
        a = torch.sin(dp / 2) ** 2 + torch.cos(p1) * torch.cos(p2) * torch.sin(dl / 2) ** 2
        return 2 * EARTH_RADIUS_KM * torch.asin(torch.sqrt(a.clamp(0.0, 1.0)))
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def geoscore(distance_km):
    """GeoScore-shaped score in [0, 5000]: 5000 * exp(-d / 1492.7)."""
    return 5000.0 * np.exp(-np.asarray(distance_km, dtype=np.float64) / GEOSCORE_SCALE_KM)


def check_lat_lon(lat: object, lon: object) -> str | None:
    """None when (lat, lon) are finite WGS84 degrees in range, else the reason."""
    for name, v, bound in (("lat", lat, 90.0), ("lon", lon, 180.0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return f"{name} must be a number, got {type(v).__name__}"
        if not math.isfinite(v):
            return f"{name} must be finite, got {v}"
        if abs(v) > bound:
            return f"{name} must be within [-{bound:g}, {bound:g}], got {v}"
    return None


def destination(
    lat: np.ndarray, lon: np.ndarray, bearing_rad: np.ndarray, angle_rad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Point reached from (lat, lon) in degrees by travelling `angle_rad` (central angle) along `bearing_rad`
    (clockwise from north). Returns degrees, lon wrapped to [-180, 180)."""
    p1, l1 = np.radians(lat), np.radians(lon)
    sin_p2 = np.sin(p1) * np.cos(angle_rad) + np.cos(p1) * np.sin(angle_rad) * np.cos(bearing_rad)
    p2 = np.arcsin(np.clip(sin_p2, -1.0, 1.0))
    l2 = l1 + np.arctan2(np.sin(bearing_rad) * np.sin(angle_rad) * np.cos(p1), np.cos(angle_rad) - np.sin(p1) * sin_p2)
    return np.degrees(p2), (np.degrees(l2) + 180.0) % 360.0 - 180.0
