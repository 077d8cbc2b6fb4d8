"""Converters from the data sets people already have into geor1's shard schema.

Each converter only *lists* rows (key, image paths, metadata, split) from its published layout; `write_rows` does
the rest the same way for all: decode-check every image, re-encode non-JPEG (or oversized) images to JPEG, fill a
missing or non-ISO country by offline reverse geocoding (the given value is kept as `country_name`), write shards
and the manifest. A bad row (missing file, undecodable image, bad coordinates) is skipped and reported with its key
and field, never silently dropped; `strict=True` stops at the first one instead.

`hold_out` carves a validation split out of a converter's training rows by place (`--val-fraction`, `--val-cities`):
whole places (cells of about `place_km` on a side) or whole cities go to `val`, so no place is in two splits.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from geor1 import Geor1Error
from geor1.data.schema import SampleError, encode_jpeg, validate_meta
from geor1.data.shards import ShardWriter, write_manifest

log = logging.getLogger(__name__)
_ISO2 = re.compile(r"[A-Z]{2}")
_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-]+")


@dataclass
class Row:
    """One sample to write. `problem` (field, reason): a row the listing already knows is bad (e.g. no satellite
    tile near its panorama); `write_rows` skips and reports it like any other bad row."""

    key: str
    ground: Path
    sat: Path | None
    meta: dict[str, Any]
    split: str
    problem: tuple[str, str] | None = None


@dataclass
class ConvertReport:
    written: dict[str, int] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"written: {self.written or 0}; skipped: {len(self.skipped)}"]
        lines += [f"  skipped {s['key']}: {s['field']}: {s['reason']}" for s in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"  ... and {len(self.skipped) - 20} more (see skipped.json)")
        return "\n".join(lines)


def make_key(*parts: object) -> str:
    """A WebDataset-safe key: letters, digits, '_' and '-' only (no dots)."""
    return _BAD_KEY_CHARS.sub("_", "_".join(str(p) for p in parts)).strip("_")[:200] or "sample"


def _image_bytes(key: str, name: str, path: Path, max_side: int | None) -> bytes:
    if not path.is_file():
        raise SampleError(key, name, f"file not found: {path}")
    data = path.read_bytes()
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except Exception as e:
        raise SampleError(key, name, f"undecodable image {path} ({type(e).__name__})") from None
    too_big = max_side is not None and max(im.size) > max_side
    if im.format == "JPEG" and im.mode == "RGB" and not too_big:
        return data  # already what the schema wants: keep the original bytes
    rgb = im.convert("RGB")
    if max_side is not None and too_big:
        scale = max_side / max(rgb.size)
        rgb = rgb.resize(
            (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale))), Image.Resampling.BICUBIC
        )
    return encode_jpeg(rgb)


def _fill_country(meta: dict[str, Any]) -> None:
    given = meta.get("country")
    if isinstance(given, str) and _ISO2.fullmatch(given):
        return
    from geor1.data.places import reverse_geocode

    if given not in (None, ""):
        meta["country_name"] = str(given)
    nearest = reverse_geocode([meta["lat"]], [meta["lon"]])[0]
    meta["country"] = nearest.country
    meta.setdefault("city", nearest.name)


def write_rows(
    rows: Iterable[Row],
    out: str | Path,
    source: str,
    licence: str,
    max_side: int | None = None,
    strict: bool = False,
    extra: dict[str, Any] | None = None,
) -> ConvertReport:
    """Write rows as shards under `out`; see the module docstring for what is checked. `extra`: more manifest keys
    (e.g. how a validation split was held out)."""
    from tqdm import tqdm

    out = Path(out)
    writers: dict[str, ShardWriter] = {}
    report = ConvertReport()
    seen: set[str] = set()
    for row in tqdm(rows, desc=f"convert {source}", unit="sample", disable=None):
        try:
            if row.problem is not None:
                raise SampleError(row.key, *row.problem)
            if row.key in seen:
                raise SampleError(row.key, "__key__", "duplicate key")
            meta = {k: v for k, v in row.meta.items() if v is not None}
            meta.setdefault("source", source)
            meta.setdefault("split", row.split)
            validate_meta(row.key, {k: v for k, v in meta.items() if k != "country"})
            _fill_country(meta)
            ground = _image_bytes(row.key, "ground.jpg", row.ground, max_side)
            sat = _image_bytes(row.key, "sat.jpg", row.sat, max_side) if row.sat is not None else None
            if row.split not in writers:
                writers[row.split] = ShardWriter(out, row.split)
            writers[row.split].write(row.key, ground, sat, meta)
            seen.add(row.key)
        except SampleError as e:
            if strict:
                raise Geor1Error(str(e)) from None
            report.skipped.append({"key": e.key, "field": e.field, "reason": e.reason})
    stats = {split: w.close() for split, w in writers.items()}
    report.written = {split: s["samples"] for split, s in stats.items()}
    if not stats:
        raise Geor1Error(
            f"no valid sample to write from {source} ({len(report.skipped)} skipped); "
            + (report.skipped[0]["reason"] if report.skipped else "the listing was empty")
        )
    write_manifest(out, stats, source, licence, extra={"skipped": len(report.skipped), **(extra or {})})
    if report.skipped:
        import json

        (out / f"skipped-{source}.json").write_text(json.dumps(report.skipped, indent=1))
        log.warning(
            "%d samples skipped while converting %s (listed in %s)",
            len(report.skipped),
            source,
            out / f"skipped-{source}.json",
        )
    return report


# ---------------------------------------------------------------------------------------------- held-out splits
KM_PER_DEGREE = 111.32  # of latitude (and of longitude at the equator)


def place_of(lat: float, lon: float, place_km: float) -> tuple[int, int]:
    """The place of a point: its cell in a grid of about `place_km` x `place_km` (rows of latitude, each cut into
    columns as wide in km as the rows are high at their middle latitude).

    >>> place_of(48.8566, 2.3522, 1.0) == place_of(48.8570, 2.3515, 1.0)  # 70 m apart
    True
    >>> place_of(48.85, 2.35, 1.0) == place_of(48.90, 2.35, 1.0)  # 5.6 km apart
    False
    """
    dlat = place_km / KM_PER_DEGREE
    row = math.floor((lat + 90.0) / dlat)
    middle = min(89.0, abs(-90.0 + (row + 0.5) * dlat))
    dlon = place_km / (KM_PER_DEGREE * math.cos(math.radians(middle)))
    return row, math.floor((lon + 180.0) / dlon)


def _point(meta: dict[str, Any]) -> tuple[float, float] | None:
    lat, lon = meta.get("lat"), meta.get("lon")
    if isinstance(lat, float | int) and isinstance(lon, float | int) and abs(lat) <= 90 and abs(lon) <= 180:
        return float(lat), float(lon)
    return None  # bad coordinates: `write_rows` skips the row and names the field


def hold_out(
    rows: Iterable[Row],
    val_fraction: float = 0.0,
    val_cities: Iterable[str] = (),
    seed: int = 0,
    place_km: float = 1.0,
    from_split: str = "train",
) -> tuple[list[Row], dict[str, Any]]:
    """Move some of the `from_split` rows to a `val` split, by place, deterministically from `seed`:

    - rows whose `city` is in `val_cities` go to val (all of them);
    - then about `val_fraction` of the remaining `from_split` rows: their places (`place_of`, cells of about
      `place_km`) are shuffled by `seed` and taken whole until the share is reached, so no place is in two splits
      (two photos metres apart on either side of a cell edge are two places: use a larger `place_km` for data
      denser than that). At least one place goes to val and at least one stays.

    Returns (all rows, splits updated, in their order; what was held out, for the manifest). Geor1Error when the
    rows already hold a val split, have no `from_split` rows, name no such city, or lie within one place.
    """
    rows = list(rows)
    cities = [c for c in val_cities if c]
    if not (0.0 <= val_fraction < 1.0):
        raise Geor1Error(f"--val-fraction must be within [0, 1), got {val_fraction}")
    if place_km <= 0:
        raise Geor1Error(f"--place-km must be > 0, got {place_km}")
    if val_fraction == 0.0 and not cities:
        return rows, {}
    own_val = sum(r.split == "val" for r in rows)
    if own_val:
        raise Geor1Error(
            f"the data already has a val split ({own_val} rows): --val-fraction/--val-cities hold one out of "
            f"'{from_split}' only where there is none"
        )
    pool = [r for r in rows if r.split == from_split]
    if not pool:
        splits = sorted({r.split for r in rows})
        raise Geor1Error(
            f"--val-fraction/--val-cities hold a val split out of '{from_split}', but these rows are all of "
            f"{splits} (convert the training rows with it)"
        )
    info: dict[str, Any] = {"from": from_split, "seed": seed}
    if cities:
        known = sorted({str(r.meta["city"]) for r in rows if r.meta.get("city") not in (None, "")})
        unknown = sorted(set(cities) - set(known))
        if unknown:
            raise Geor1Error(f"--val-cities {unknown}: no such city in the data (cities: {known})")
        elsewhere = sorted(set(cities) - {str(r.meta.get("city")) for r in pool})
        if elsewhere:
            raise Geor1Error(f"--val-cities {elsewhere}: no '{from_split}' rows of them (a city of another split?)")
        for r in pool:
            if r.meta.get("city") in cities:
                r.split = "val"
        pool = [r for r in pool if r.split == from_split]
        if not pool:
            raise Geor1Error(f"--val-cities {cities} leave no '{from_split}' rows")
        info["cities"] = cities
    if val_fraction > 0.0:
        places: dict[tuple[int, int], list[Row]] = {}
        for r in pool:
            point = _point(r.meta)
            if point is not None:
                places.setdefault(place_of(*point, place_km), []).append(r)
        if len(places) < 2:
            raise Geor1Error(
                f"--val-fraction: the {len(pool)} '{from_split}' rows lie within {len(places)} place(s) of about "
                f"{place_km:g} km: give a smaller --place-km (or --val-cities)"
            )
        order = sorted(places)
        random.Random(seed).shuffle(order)
        target = val_fraction * sum(len(v) for v in places.values())
        taken: list[tuple[int, int]] = []
        count = 0
        for place in order:
            if count >= target or len(taken) == len(order) - 1:
                break
            size = len(places[place])
            if not taken or count + size <= target + size / 2:  # closer to the target with it than without
                taken.append(place)
                count += size
        for place in taken:
            for r in places[place]:
                r.split = "val"
        info.update(fraction=val_fraction, place_km=place_km, places=len(taken), of_places=len(order))
    info["rows"] = sum(r.split == "val" for r in rows)
    log.info("held out %d rows as 'val': %s", info["rows"], info)
    return rows, info


# ---------------------------------------------------------------------------------------------- CSV benchmarks
def csv_rows(
    csv_path: str | Path,
    images: str | Path,
    id_col: str = "IMG_ID",
    lat_col: str = "LAT",
    lon_col: str = "LON",
    path_col: str | None = None,
    sat_col: str | None = None,
    city_col: str | None = None,
    country_col: str | None = None,
    split: str = "test",
    ext: str = ".jpg",
    swap_lat_lon: bool | None = None,
) -> Iterator[Row]:
    """Rows of an image-folder + CSV benchmark (im2gps3k, YFCC4k, IMAGEO-Bench, OSV-5M, MP16-Reason style), or of
    one's own data (a ground column and a `sat_col`). Every CSV path of geor1 reads through here, so every one runs
    the same checks, at once (not when the rows are first iterated): the file and its columns exist, and the
    latitude and longitude columns are not swapped (`check_swapped`, when `swap_lat_lon` is None; True reads them
    swapped, False as given without the check). Rows with bad coordinates or images are skipped by `write_rows`
    and listed."""
    csv_path, images = Path(csv_path), Path(images)
    if not csv_path.is_file():
        raise Geor1Error(f"CSV not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        fieldnames = csv.DictReader(f).fieldnames or []
    missing = [
        c for c in (id_col, lat_col, lon_col, path_col, sat_col, city_col, country_col) if c and c not in fieldnames
    ]
    if missing:
        raise Geor1Error(f"{csv_path}: no column {missing[0]!r} (columns: {', '.join(fieldnames)})")
    if swap_lat_lon is None:
        check_swapped(csv_path, lat_col, lon_col)
    return _csv_rows(
        csv_path, images, id_col, lat_col, lon_col, path_col, sat_col, city_col, country_col, split, ext, swap_lat_lon
    )


def _csv_rows(
    csv_path: Path,
    images: Path,
    id_col: str,
    lat_col: str,
    lon_col: str,
    path_col: str | None,
    sat_col: str | None,
    city_col: str | None,
    country_col: str | None,
    split: str,
    ext: str,
    swap_lat_lon: bool | None,
) -> Iterator[Row]:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for line, rec in enumerate(csv.DictReader(f), start=2):
            ident = rec[id_col].strip()
            key = make_key(Path(ident).stem if Path(ident).suffix else ident)
            lat, lon = rec[lat_col], rec[lon_col]
            if swap_lat_lon:
                lat, lon = lon, lat
            name = rec[path_col] if path_col else (ident if Path(ident).suffix else ident + ext)
            meta = {
                "lat": _try_float(lat),
                "lon": _try_float(lon),
                "id": ident,
                "csv_line": line,
                "city": rec[city_col] if city_col else None,
                "country": rec[country_col] if country_col else None,
            }
            yield Row(key, images / name, (images / rec[sat_col]) if sat_col else None, meta, split)


def _try_float(v: str) -> float | str:
    try:
        return float(v)
    except ValueError:
        return v  # validate_meta names the field


def check_lat_lon_columns(csv_path: str | Path, lat_col: str, lon_col: str, limit: int = 5000) -> dict[str, float]:
    """Share of points on land as given and with the two columns swapped (photos are taken on land): catches CSVs
    whose header swaps LAT and LON, like an old copy of im2gps3k's."""
    from geor1.data.geoworld import is_water

    lats, lons = [], []
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        for i, rec in enumerate(csv.DictReader(f)):
            if i >= limit:
                break
            try:
                lats.append(float(rec[lat_col]))
                lons.append(float(rec[lon_col]))
            except (KeyError, ValueError):
                continue
    lat, lon = np.array(lats), np.array(lons)
    ok = (np.abs(lat) <= 90) & (np.abs(lon) <= 180)
    ok_swapped = (np.abs(lon) <= 90) & (np.abs(lat) <= 180)
    as_given = float(np.mean(ok & ~is_water(np.clip(lat, -90, 90), lon))) if len(lat) else 0.0
    swapped = float(np.mean(ok_swapped & ~is_water(np.clip(lon, -90, 90), lat))) if len(lat) else 0.0
    return {"land_as_given": as_given, "land_swapped": swapped, "n": float(len(lat))}


SWAP_MARGIN = 0.2  # columns are swapped when this much larger a share of points falls on land read the other way


def check_swapped(csv_path: str | Path, lat_col: str, lon_col: str) -> None:
    """Geor1Error when the latitude and longitude columns look swapped (`check_lat_lon_columns`), naming both
    fixes: read them swapped, or keep the header. Scoring against swapped truth would be wrong without a word."""
    land = check_lat_lon_columns(csv_path, lat_col, lon_col)
    if land["land_swapped"] > land["land_as_given"] + SWAP_MARGIN:
        raise Geor1Error(
            f"{csv_path}: the {lat_col}/{lon_col} columns look swapped: {land['land_as_given']:.0%} of "
            f"{int(land['n'])} points fall on land as the header says, {land['land_swapped']:.0%} read the other way "
            f"round. If the header is wrong, read them swapped: `--lat-col {lon_col} --lon-col {lat_col}` (or "
            "`--lat-lon-check swap` in `geor1 data convert csv`); if it is right, `--lat-lon-check off`"
        )


# ---------------------------------------------------------------------------------------------- VIGOR
VIGOR_CITIES = ("Chicago", "NewYork", "SanFrancisco", "Seattle")
VIGOR_CROSS_TRAIN = ("NewYork", "Seattle")


VIGOR_LISTS = {
    "cross": (("pano_label_balanced.txt", None),),
    "same": (("same_area_balanced_train.txt", "train"), ("same_area_balanced_test.txt", "test")),
}


def vigor_rows(
    root: str | Path,
    mode: str = "cross",
    cities: Iterable[str] | None = None,
    test_cities: Iterable[str] = (),
    max_sat_m: float = 100.0,
) -> Iterator[Row]:
    """VIGOR: `<City>/panorama/<prefix>,<lat>,<lon>,.jpg`, `<City>/satellite/satellite_<lat>_<lon>.png`, and
    `splits/<City>/{same_area_balanced_train,same_area_balanced_test,pano_label_balanced}.txt` (space-separated:
    panorama, then 4 x (satellite, dy, dx); the first satellite is the positive). Cross-area: train New York +
    Seattle, test Chicago + San Francisco (all of a city's panoramas); same-area: each city's train/test lists.

    One's own data in the same layout works too: `cities` (default: every folder under `root` with a `panorama/`
    folder) whose split lists do not exist are read from their folders, each panorama paired with the satellite tile
    whose centre (from its file name) is nearest, within `max_sat_m` metres (a panorama without one is skipped
    and listed); their rows are train. `test_cities`: cities whose rows are all test (cross-area evaluation); when
    given, the other cities are train (VIGOR's own cross-area assignment holds only without it). A held-out val
    split comes from `hold_out` (`--val-fraction`, `--val-cities`)."""
    root = Path(root)
    if mode not in VIGOR_LISTS:
        raise Geor1Error(f"VIGOR mode must be 'cross' or 'same', got {mode!r}")
    found = sorted(p.name for p in root.iterdir() if (p / "panorama").is_dir()) if root.is_dir() else []
    cities = list(cities) if cities is not None else found
    if not cities:
        raise Geor1Error(f"no city folders with a panorama/ folder under {root} (the VIGOR layout)")
    missing = [c for c in cities if c not in found]
    if missing:
        raise Geor1Error(f"VIGOR cities {missing} have no {root}/<City>/panorama/ folder (cities found: {found})")
    test = {c for c in test_cities if c}
    unknown = sorted(test - set(cities))
    if unknown:
        raise Geor1Error(f"--test-cities {unknown} not among the cities converted ({cities})")
    for city in cities:
        if test:
            whole = "test" if city in test else "train"
        elif city in VIGOR_CITIES:
            whole = "train" if city in VIGOR_CROSS_TRAIN else "test"
        else:
            whole = "train"
        lists = [(root / "splits" / city / name, split) for name, split in VIGOR_LISTS[mode]]
        if all(path.is_file() for path, _ in lists):
            for path, split in lists:
                listed = whole if split is None or city in test else split
                yield from _vigor_listed(root, city, path, listed)
        else:
            log.info("VIGOR city %s has no split lists under %s: reading its folders", city, root / "splits")
            yield from _vigor_scanned(root, city, whole, max_sat_m)


def _sat_point(name: str) -> tuple[float | str | None, float | str | None]:
    """(lat, lon) of a `satellite_<lat>_<lon>.png` tile (None, None for another name)."""
    parts = Path(name).stem.split("_")
    return (_try_float(parts[1]), _try_float(parts[2])) if len(parts) == 3 else (None, None)


def _vigor_meta(city: str, pano: str, sat: str | None) -> dict[str, Any]:
    fields = pano.split(",")
    sat_lat, sat_lon = _sat_point(sat) if sat else (None, None)
    return {
        "lat": _try_float(fields[1]) if len(fields) > 2 else "?",
        "lon": _try_float(fields[2]) if len(fields) > 2 else "?",
        "city": city,
        "country": "US" if city in VIGOR_CITIES else None,  # one's own cities: reverse-geocoded
        "sat_lat": sat_lat,
        "sat_lon": sat_lon,
    }


def _vigor_listed(root: Path, city: str, path: Path, split: str) -> Iterator[Row]:
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        pano, sat = parts[0], parts[1]
        key = make_key("vigor", city, Path(pano).stem)
        meta = _vigor_meta(city, pano, sat)
        yield Row(key, root / city / "panorama" / pano, root / city / "satellite" / sat, meta, split)


def _vigor_scanned(root: Path, city: str, split: str, max_sat_m: float) -> Iterator[Row]:
    """A city's panoramas from its folder, each with the nearest satellite tile (by the tiles' file names)."""
    from scipy.spatial import cKDTree

    from geor1.geo import haversine_km

    tiles = []
    sat_dir = root / city / "satellite"
    for tile in sorted(sat_dir.iterdir()) if sat_dir.is_dir() else []:
        tile_lat, tile_lon = _sat_point(tile.name)
        if isinstance(tile_lat, float) and isinstance(tile_lon, float):
            tiles.append((tile_lat, tile_lon, tile.name))
    if not tiles:
        raise Geor1Error(f"{sat_dir}: no satellite_<lat>_<lon> tiles to pair {city}'s panoramas with")
    lat0 = math.cos(math.radians(float(np.mean([t[0] for t in tiles]))))
    tree = cKDTree(np.array([(t[0], t[1] * lat0) for t in tiles]))
    for pano in sorted((root / city / "panorama").iterdir()):
        if not pano.is_file():
            continue
        key = make_key("vigor", city, pano.stem)
        meta = _vigor_meta(city, pano.name, None)
        lat, lon = meta["lat"], meta["lon"]
        if not (isinstance(lat, float) and isinstance(lon, float)):
            bad_name = ("lat", f"no <prefix>,<lat>,<lon>, in the panorama's file name {pano.name}")
            yield Row(key, pano, None, meta, split, bad_name)
            continue
        _, i = tree.query((lat, lon * lat0))
        sat_lat, sat_lon, name = tiles[int(i)]
        metres = 1000.0 * float(haversine_km(lat, lon, sat_lat, sat_lon))
        meta.update(sat_lat=sat_lat, sat_lon=sat_lon, sat_m=round(metres, 1))
        problem: tuple[str, str] | None = None
        if metres > max_sat_m:
            problem = ("sat.jpg", f"no satellite tile within {max_sat_m:g} m (the nearest, {name}: {metres:.0f} m)")
        yield Row(key, pano, sat_dir / name, meta, split, problem)


# ---------------------------------------------------------------------------------------------- CVUSA
CVUSA_LOCATION_COLUMNS = "sat_lat,sat_lon,lat,lon,id"


def cvusa_rows(
    root: str | Path, locations: str = "split_locations/all.csv", location_columns: str = CVUSA_LOCATION_COLUMNS
) -> Iterator[Row]:
    """CVUSA (the 35,532 / 8,884 subset): header-less `splits/train-19zl.csv` and `splits/val-19zl.csv` rows of
    (satellite path, ground path, annotation path), and a header-less locations file whose columns are named by
    `location_columns` (must include `id`, `lat`, `lon`; `id` matches the images' file stem)."""
    root = Path(root)
    cols = [c.strip() for c in location_columns.split(",")]
    for needed in ("id", "lat", "lon"):
        if needed not in cols:
            raise Geor1Error(f"--location-columns must name an '{needed}' column, got {location_columns!r}")
    loc_path = root / locations
    if not loc_path.is_file():
        raise Geor1Error(f"CVUSA locations file not found: {loc_path}")
    where: dict[str, dict[str, str]] = {}
    with open(loc_path, newline="") as f:
        for rec in csv.reader(f):
            if len(rec) >= len(cols):
                entry = dict(zip(cols, (v.strip() for v in rec), strict=False))  # extra columns: unnamed, unused
                where[Path(entry["id"]).stem] = entry
    for split_file, split in (("train-19zl.csv", "train"), ("val-19zl.csv", "test")):
        path = root / "splits" / split_file
        if not path.is_file():
            raise Geor1Error(f"CVUSA split file not found: {path}")
        with open(path, newline="") as f:
            for rec in csv.reader(f):
                if len(rec) < 2:
                    continue
                sat, grd = rec[0].strip(), rec[1].strip()
                stem = Path(grd).stem
                loc = where.get(stem, {})
                key = make_key("cvusa", stem)
                meta = {
                    "lat": _try_float(loc.get("lat", "missing")),
                    "lon": _try_float(loc.get("lon", "missing")),
                    "country": "US",
                    "sat_lat": _try_float(loc["sat_lat"]) if "sat_lat" in loc else None,
                    "sat_lon": _try_float(loc["sat_lon"]) if "sat_lon" in loc else None,
                }
                yield Row(key, root / grd, root / sat, meta, split)


# ---------------------------------------------------------------------------------------------- CVACT
def utm_to_latlon(easting: np.ndarray, northing: np.ndarray, zone: int, south: bool) -> tuple[np.ndarray, np.ndarray]:
    """WGS84 UTM -> (lat, lon) degrees (Krüger series to n^3; sub-millimetre within a zone)."""
    a, f = 6378137.0, 1 / 298.257223563
    k0, e0, n0 = 0.9996, 500000.0, 10000000.0 if south else 0.0
    n = f / (2 - f)
    big_a = a / (1 + n) * (1 + n**2 / 4 + n**4 / 64)
    beta = (n / 2 - 2 * n**2 / 3 + 37 * n**3 / 96, n**2 / 48 + n**3 / 15, 17 * n**3 / 480)
    delta = (2 * n - 2 * n**2 / 3 - 2 * n**3, 7 * n**2 / 3 - 8 * n**3 / 5, 56 * n**3 / 15)
    xi = (np.asarray(northing, float) - n0) / (k0 * big_a)
    eta = (np.asarray(easting, float) - e0) / (k0 * big_a)
    xi_p, eta_p = xi.copy(), eta.copy()
    for j, b in enumerate(beta, start=1):
        xi_p -= b * np.sin(2 * j * xi) * np.cosh(2 * j * eta)
        eta_p -= b * np.cos(2 * j * xi) * np.sinh(2 * j * eta)
    chi = np.arcsin(np.sin(xi_p) / np.cosh(eta_p))
    lat = chi + sum(d * np.sin(2 * j * chi) for j, d in enumerate(delta, start=1))
    lon0 = math.radians(zone * 6 - 183)
    lon = lon0 + np.arctan2(np.sinh(eta_p), np.cos(xi_p))
    return np.degrees(lat), np.degrees(lon)


def cvact_rows(root: str | Path, mat: str = "ACT_data.mat", zone: int = 55, south: bool = True) -> Iterator[Row]:
    """CVACT: `ACT_data.mat` with `panoIds`, `utm` ([N, 2] easting, northing; Canberra, zone 55 south),
    `trainSet.trainInd` and `valSet.valInd` (1-based); images `streetview/{id}_grdView.jpg` and
    `satview_polish/{id}_satView_polish.jpg`."""
    from scipy.io import loadmat

    root = Path(root)
    path = root / mat
    if not path.is_file():
        raise Geor1Error(f"CVACT metadata not found: {path}")
    data = loadmat(path)
    for name in ("panoIds", "utm", "trainSet", "valSet"):
        if name not in data:
            raise Geor1Error(f"{path}: no '{name}' entry (found {sorted(k for k in data if not k.startswith('__'))})")
    ids = [str(np.asarray(x).ravel()[0]) if np.asarray(x).size else "" for x in np.asarray(data["panoIds"]).ravel()]
    utm = np.asarray(data["utm"], dtype=float).reshape(-1, 2)
    lat, lon = utm_to_latlon(utm[:, 0], utm[:, 1], zone, south)
    for split, struct, field_name in (("train", "trainSet", "trainInd"), ("val", "valSet", "valInd")):
        indices = np.asarray(data[struct][field_name][0][0]).ravel().astype(int) - 1
        for i in indices:
            pid = ids[i]
            yield Row(
                make_key("cvact", pid),
                root / "streetview" / f"{pid}_grdView.jpg",
                root / "satview_polish" / f"{pid}_satView_polish.jpg",
                {
                    "lat": float(lat[i]),
                    "lon": float(lon[i]),
                    "city": "Canberra",
                    "country": "AU",
                    "utm_e": float(utm[i, 0]),
                    "utm_n": float(utm[i, 1]),
                },
                split,
            )


# ---------------------------------------------------------------------------------------------- CV-Cities
def cvcities_rows(
    root: str | Path,
    test_cities: Iterable[str] = (),
    csv_name: str = "{city}.csv",
    ground_dir: str = "ground",
    sat_dir: str = "satellite",
) -> Iterator[Row]:
    """CV-Cities (16 cities, ground/satellite pairs with GPS). Its release publishes no folder layout, so geor1
    reads one folder per city: `<root>/<City>/{ground,satellite}/<name>` (same file name for a pair) and
    `<root>/<City>/<City>.csv` with columns `name,lat,lon`; every name is configurable. Cities in `test_cities`
    go to the test split (cross-area), the rest to train."""
    root = Path(root)
    test = set(test_cities)
    cities = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not cities:
        raise Geor1Error(f"no city folders under {root}")
    unknown = test - set(cities)
    if unknown:
        raise Geor1Error(f"--test-cities {sorted(unknown)} not found under {root} (cities: {cities})")
    for city in cities:
        table = root / city / csv_name.format(city=city)
        if not table.is_file():
            raise Geor1Error(f"CV-Cities table not found: {table}")
        with open(table, newline="", encoding="utf-8-sig") as f:
            for rec in csv.DictReader(f):
                name = rec["name"]
                yield Row(
                    make_key("cvc", city, Path(name).stem),
                    root / city / ground_dir / name,
                    root / city / sat_dir / name,
                    {"lat": _try_float(rec["lat"]), "lon": _try_float(rec["lon"]), "city": city},
                    "test" if city in test else "train",
                )
