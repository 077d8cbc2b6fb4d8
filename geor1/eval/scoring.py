"""Scoring geolocation predictions against the truth, with or without a model: the same `GeodesicError` either way,
so a peer's outputs or a commercial API's can sit in the same table as geor1's.

Truth CSV: `id,lat,lon` (optionally `city,country`). Predictions CSV: `id,lat,lon` or `id,text` (free text parsed by
the one answer parser; the content of the last <answer> tag when there is one). Every truth row counts: a missing,
empty or unparseable prediction is a failure.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import torch

from geor1 import Geor1Error
from geor1.answers import answer_text, normalize_name, parse_coordinates
from geor1.geo import check_lat_lon, haversine_km
from geor1.metrics.geodesic import GeodesicError


def coordinates_from_text(text: str) -> tuple[float, float] | None:
    ans = answer_text(text)
    body = ans if ans is not None else text
    return parse_coordinates(body.split("(")[0])


def score(predictions: dict[str, tuple[float, float] | None], truth: dict[str, dict[str, Any]]
          ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """predictions: id -> (lat, lon) or None; truth: id -> {lat, lon[, city, country]} -> (metrics, rows)."""
    from geor1.data.places import reverse_geocode

    ids = list(truth)
    if not ids:
        raise Geor1Error("no truth rows to score against")
    pred = [predictions.get(i) for i in ids]
    parsed = torch.tensor([p is not None for p in pred])
    plat = torch.tensor([p[0] if p else 0.0 for p in pred], dtype=torch.float64)
    plon = torch.tensor([p[1] if p else 0.0 for p in pred], dtype=torch.float64)
    tlat = torch.tensor([float(truth[i]["lat"]) for i in ids], dtype=torch.float64)
    tlon = torch.tensor([float(truth[i]["lon"]) for i in ids], dtype=torch.float64)
    labelled = all(truth[i].get("country") for i in ids)
    city_hit = country_hit = None
    nearest: list[Any] = [None] * len(ids)
    if labelled and bool(parsed.any()):
        found = reverse_geocode(plat[parsed].numpy(), plon[parsed].numpy())
        it = iter(found)
        nearest = [next(it) if ok else None for ok in parsed.tolist()]
        city_hit = torch.tensor([n is not None and normalize_name(n.name) == normalize_name(truth[i].get("city"))
                                 for n, i in zip(nearest, ids)])
        country_hit = torch.tensor([n is not None and n.country == str(truth[i]["country"]).upper()
                                    for n, i in zip(nearest, ids)])
    elif labelled:
        city_hit = country_hit = torch.zeros(len(ids), dtype=torch.bool)
    metric = GeodesicError()
    metric.update(plat, plon, tlat, tlon, parsed, city_hit, country_hit)
    metrics = {k: float(v) for k, v in metric.compute().items()}
    rows = []
    for j, i in enumerate(ids):
        p = pred[j]
        rows.append({"id": i, "lat": p[0] if p else "", "lon": p[1] if p else "", "parsed": int(p is not None),
                     "km": round(float(haversine_km(tlat[j], tlon[j], p[0], p[1])), 3) if p else "",
                     "pred_city": nearest[j].name if nearest[j] else "",
                     "pred_country": nearest[j].country if nearest[j] else ""})
    return metrics, rows


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
