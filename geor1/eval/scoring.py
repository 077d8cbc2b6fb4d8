"""Scoring geolocation predictions against the truth, with or without a model: the same `GeodesicError` either way,
so a peer's outputs or a commercial API's can sit in the same table as geor1's.

Truth CSV: `id,lat,lon` (optionally `city,country`). Predictions CSV: `id,lat,lon` or `id,text` (any model's raw
output, read by `geor1.reading.read_point`: answer tags, JSON, labelled values, a final coordinates line, the strict
pair). Every truth row counts: a missing, empty or unreadable prediction is a failure, counted by reason.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from geor1 import Geor1Error
from geor1.geo import check_lat_lon
from geor1.tasks import GeolocationTask, GeoTarget, get_task


def coordinates_from_text(text: str) -> tuple[float, float] | None:
    """The point of a free-text prediction, read as any model's answer is (`geor1.reading.read_point`)."""
    from geor1.reading import read_point

    return read_point(text).point


def score_texts(texts: dict[str, str], truth: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], list[dict]]:
    """Answers (id -> text; a missing id is an empty answer) against the truth (id -> {lat, lon[, city, country]})
    -> (metrics, rows): the rows and metrics `EvalModule` writes for a model's completions, so a peer's or an API
    model's outputs sit in the same table as geor1's."""
    from geor1.data.sample import ChatSample, Prompt
    from geor1.eval.rows import geolocation_rows, metrics_of_rows

    if not truth:
        raise Geor1Error("no truth rows to score against")
    samples = []
    for i, t in truth.items():
        target = GeoTarget(float(t["lat"]), float(t["lon"]), t.get("city") or None, t.get("country") or None)
        samples.append(ChatSample(i, Prompt("", []), target))
    ids = list(truth)
    rows = geolocation_rows(get_task(GeolocationTask.name), samples, [texts.get(i, "") for i in ids], [None] * len(ids))
    return metrics_of_rows(GeolocationTask.name, rows), rows


ID_COLUMNS = ("id", "IMG_ID", "image_id", "image")
LAT_COLUMNS = ("lat", "LAT", "latitude", "Latitude")
LON_COLUMNS = ("lon", "LON", "lng", "longitude", "Longitude")


def pick_column(path: str | Path, header: list[str], given: str | None, names: tuple[str, ...], what: str) -> str:
    """The CSV column `given`, else the first of `names` in `header`; a one-line error naming the option otherwise."""
    if given:
        if given not in header:
            raise Geor1Error(f"{path}: no column {given!r} (columns: {', '.join(header)})")
        return given
    found = next((c for c in names if c in header), None)
    if found is None:
        raise Geor1Error(f"{path}: no {what} column among {', '.join(header)} (name it with --{what}-col)")
    return found


def read_truth(
    path: str | Path,
    id_col: str | None = None,
    lat_col: str | None = None,
    lon_col: str | None = None,
    lat_lon_check: str = "auto",
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """(id -> {lat, lon, city, country}, skipped rows): the truth CSV's rows, columns named or found among the
    usual names; a row with no id, non-numeric or invalid coordinates, or an id seen before is skipped and listed
    (line, id, reason), never silently dropped, and the rest are read. `lat_lon_check`: "auto" refuses columns that
    look swapped (`geor1.data.convert.check_swapped`, as every CSV geor1 reads), "swap" reads them swapped, "off"
    trusts the header."""
    from geor1.data.convert import check_swapped

    if lat_lon_check not in ("auto", "swap", "off"):
        raise Geor1Error(f"lat_lon_check must be auto, swap or off, got {lat_lon_check!r}")
    out: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, Any]] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = list(reader.fieldnames or [])
        ic = pick_column(path, header, id_col, ID_COLUMNS, "id")
        la = pick_column(path, header, lat_col, LAT_COLUMNS, "lat")
        lo = pick_column(path, header, lon_col, LON_COLUMNS, "lon")
        if lat_lon_check == "swap":
            la, lo = lo, la
        elif lat_lon_check == "auto":
            check_swapped(path, la, lo)
        for n, rec in enumerate(reader, start=2):
            key = (rec.get(ic) or "").strip()
            try:
                lat, lon = float(rec[la]), float(rec[lo])
                reason = check_lat_lon(lat, lon)
            except (TypeError, ValueError):
                reason = f"lat/lon are not numbers ({rec.get(la)!r}, {rec.get(lo)!r})"
            if not key:
                reason = f"empty {ic!r}"
            elif key in out:
                reason = f"id {key!r} seen before"
            if reason:
                skipped.append({"line": n, "id": key, "reason": reason})
                continue
            out[key] = {"lat": lat, "lon": lon, "city": rec.get("city"), "country": rec.get("country")}
    if not out:
        raise Geor1Error(f"{path}: no valid truth row ({len(skipped)} skipped; the first: {skipped[:1]})")
    return out, skipped


def read_predictions(path: str | Path) -> dict[str, str]:
    """id -> the answer's text, from a CSV of id,text (any model's raw output) or id,lat,lon (written as the text
    "lat, lon", read by the same reader; an empty or invalid pair is an unreadable answer, never dropped)."""
    out: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = set(reader.fieldnames or [])
        if "id" not in cols or not ({"lat", "lon"} <= cols or "text" in cols):
            raise Geor1Error(f"{path}: predictions CSV needs id,lat,lon or id,text (columns: {sorted(cols)})")
        for rec in reader:
            text = rec.get("text") or ""
            if not text and rec.get("lat") not in (None, "") and rec.get("lon") not in (None, ""):
                text = f"{rec['lat'].strip()}, {rec['lon'].strip()}"
            out[rec["id"]] = text
    return out
