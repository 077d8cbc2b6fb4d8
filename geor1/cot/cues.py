"""Visual and geographic cues computed from a sample's own images and metadata, so that synthetic reasoning states
what the model can see (and what the fact-check can verify), not boilerplate.

Land cover is a per-pixel colour rule on the overhead tile or the ground view below the horizon: water (blue clearly
above red and green), snow/ice (bright and grey), vegetation (green above red), bare/desert (warm and bright) and
"other" (dark rock, cloud shadow, haze). Coarse by design: it matches what a small model can learn from Blue Marble
colours.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

COVERS = ("water", "snow", "vegetation", "bare")


def cover_fractions(rgb: np.ndarray) -> dict[str, float]:
    """[..., 3] RGB (0..255) -> share of pixels per cover class (COVERS + "other"), summing to 1."""
    x = rgb.reshape(-1, 3).astype(np.float32)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    bright = x.mean(1)
    water = (b > r + 15) & (b > g + 5)
    snow = ~water & (bright > 170) & (np.abs(r - b) < 30)
    veg = ~water & ~snow & (g >= r - 5) & (g > b)
    bare = ~water & ~snow & ~veg & (r > b + 20) & (bright > 90)
    n = max(len(x), 1)
    out = {"water": water.sum() / n, "snow": snow.sum() / n, "vegetation": veg.sum() / n, "bare": bare.sum() / n}
    out["other"] = max(0.0, 1.0 - sum(out.values()))
    return {k: float(v) for k, v in out.items()}


def dominant(cover: dict[str, float]) -> str:
    return max((*COVERS, "other"), key=lambda c: cover.get(c, 0.0))


def ruggedness(rgb: np.ndarray) -> float:
    """Mean absolute luminance gradient: higher for mountains and broken relief than for plains and sea."""
    lum = rgb.astype(np.float32).mean(-1)
    return float(np.abs(np.diff(lum, axis=0)).mean() + np.abs(np.diff(lum, axis=1)).mean())


def ground_near(ground: Image.Image) -> np.ndarray:
    """The bottom quarter of a ground view: the ground nearest the camera, least hazed, which the centre of the
    overhead tile shows from above."""
    arr = np.asarray(ground.convert("RGB"))
    return arr[int(arr.shape[0] * 0.75) :]


def tile_centre(tile: Image.Image) -> np.ndarray:
    """The central box of an overhead tile (half its width and height): the surroundings of the place itself."""
    arr = np.asarray(tile.convert("RGB"))
    h, w, _ = arr.shape
    return arr[h // 4 : h - h // 4, w // 4 : w - w // 4]


def ground_below_horizon(ground: Image.Image) -> np.ndarray:
    """The part of a ground view below the horizon (GeoWorld renders the horizon near mid-height; real photos:
    the lower half is a fair proxy)."""
    arr = np.asarray(ground.convert("RGB"))
    return arr[int(arr.shape[0] * 0.55) :]


@dataclass
class PlaceCues:
    hemisphere_ns: str  # "northern" | "southern"
    hemisphere_ew: str  # "eastern" | "western"
    band: str  # "tropical" | "subtropical" | "temperate" | "subpolar" | "polar"
    climate: str  # a climate guess from band + cover


def latitude_band(lat: float) -> str:
    a = abs(lat)
    if a < 23.44:
        return "tropical"
    if a < 35.0:
        return "subtropical"
    if a < 55.0:
        return "temperate"
    if a < 66.56:
        return "subpolar"
    return "polar"


def place_cues(lat: float, lon: float, cover: dict[str, float]) -> PlaceCues:
    band = latitude_band(lat)
    top = dominant(cover)
    if top == "bare":
        climate = "arid"
    elif top == "snow" or band == "polar":
        climate = "polar or alpine"
    elif band == "tropical":
        climate = "tropical humid"
    elif band in ("subpolar",):
        climate = "boreal"
    else:
        climate = f"{band} humid"
    return PlaceCues("northern" if lat >= 0 else "southern", "eastern" if lon >= 0 else "western", band, climate)
