"""Scoring geolocation predictions against the truth, with or without a model: the same `GeodesicError` either way,
so a peer's outputs or a commercial API's can sit in the same table as geor1's.

Truth CSV: `id,lat,lon` (optionally `city,country`). Predictions CSV: `id,lat,lon` or `id,text` (free text read by
the geolocation task of `geor1.tasks`: the content of the last <answer> tag when there is one, else the whole text).
Every truth row counts: a missing, empty or unparseable prediction is a failure.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from geor1 import Geor1Error
from geor1.geo import check_lat_lon
from geor1.tasks import GeolocationTask, GeoTarget, get_task
from geor1.tasks.geolocation import geodesic_metrics


def coordinates_from_text(text: str) -> tuple[float, float] | None:
    """The point of a free-text prediction, read by the geolocation task: the content of the last <answer> tag
    when there is one, else the whole text."""
    ans = get_task(GeolocationTask.name).parse(text, tagged=False)
    return None if ans is None else ans.point


def score(
    predictions: dict[str, tuple[float, float] | None], truth: dict[str, dict[str, Any]]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """predictions: id -> (lat, lon) or None; truth: id -> {lat, lon[, city, country]} -> (metrics, rows), as
    `geor1.tasks.geolocation.geodesic_metrics` computes them."""
    targets = {
        i: GeoTarget(float(t["lat"]), float(t["lon"]), t.get("city") or None, t.get("country") or None)
        for i, t in truth.items()
    }
    return geodesic_metrics(predictions, targets)


def read_truth(path: str | Path) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        for col in ("id", "lat", "lon"):
            if col not in (reader.fieldnames or []):
                raise Geor1Error(f"{path}: truth CSV needs columns id,lat,lon (missing {col!r})")
        for n, rec in enumerate(reader, start=2):
            try:
                lat, lon = float(rec["lat"]), float(rec["lon"])
            except ValueError:
                raise Geor1Error(f"{path}:{n}: lat/lon are not numbers ({rec['lat']!r}, {rec['lon']!r})") from None
            reason = check_lat_lon(lat, lon)
            if reason:
                raise Geor1Error(f"{path}:{n}: {reason}")
            out[rec["id"]] = {"lat": lat, "lon": lon, "city": rec.get("city"), "country": rec.get("country")}
    return out


def read_predictions(path: str | Path) -> dict[str, tuple[float, float] | None]:
    out: dict[str, tuple[float, float] | None] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if "id" not in cols or not ({"lat", "lon"} <= cols or "text" in cols):
            raise Geor1Error(f"{path}: predictions CSV needs id,lat,lon or id,text (columns: {sorted(cols)})")
        for rec in reader:
            coords = None
            if rec.get("lat") not in (None, "") and rec.get("lon") not in (None, ""):
                try:
                    lat, lon = float(rec["lat"]), float(rec["lon"])
                    coords = (lat, lon) if check_lat_lon(lat, lon) is None else None
                except ValueError:
                    coords = None
            if coords is None and rec.get("text"):
                coords = coordinates_from_text(rec["text"])
            out[rec["id"]] = coords
    return out
