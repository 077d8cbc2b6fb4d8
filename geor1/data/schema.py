"""The sample schema of a ground/satellite pair shard, and its validation.

One sample = `<key>.ground.jpg` (+ `<key>.sat.jpg`, absent for ground-only benchmarks) + `<key>.json` with
`lat`, `lon` (required, WGS84 degrees), `city`, `country` (ISO 3166-1 alpha-2), `source`, optional `heading`
(degrees clockwise from north), `date`, `split`.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from geor1.geo import check_lat_lon

SCHEMA_VERSION = 1
GROUND, SAT, META = "ground.jpg", "sat.jpg", "json"
_KEY = re.compile(r"[A-Za-z0-9_\-]{1,200}")
_COUNTRY = re.compile(r"[A-Z]{2}")
OPTIONAL_STR = ("city", "source", "date", "split")


class SampleError(ValueError):
    """A sample that breaks the schema; names the key and the field."""

    def __init__(self, key: str, field_name: str, reason: str) -> None:
        super().__init__(f"sample '{key}': field '{field_name}': {reason}")
        self.key, self.field, self.reason = key, field_name, reason


@dataclass
class PairSample:
    """A decoded pair: `ground` and `sat` are RGB PIL images (`sat` None for ground-only data)."""

    key: str
    ground: Image.Image
    sat: Image.Image | None
    meta: dict[str, Any] = field(default_factory=dict)


def validate_key(key: str) -> None:
    # WebDataset splits a file name at the first dot of its basename: keys must not hold dots (or slashes).
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise SampleError(str(key), "__key__", "keys are 1-200 characters of letters, digits, '_' and '-'")


def validate_meta(key: str, meta: object) -> dict[str, Any]:
    """The metadata, checked; SampleError naming the field otherwise."""
    if not isinstance(meta, dict):
        raise SampleError(key, "json", f"metadata must be a JSON object, got {type(meta).__name__}")
    for name in ("lat", "lon"):
        if name not in meta:
            raise SampleError(key, name, "required field is missing")
    reason = check_lat_lon(meta["lat"], meta["lon"])
    if reason:
        raise SampleError(key, reason.split()[0], reason)
    country = meta.get("country")
    if country is not None and (not isinstance(country, str) or not _COUNTRY.fullmatch(country)):
        raise SampleError(key, "country", f"must be an ISO 3166-1 alpha-2 code like 'FR', got {country!r}")
    for name in OPTIONAL_STR:
        if meta.get(name) is not None and not isinstance(meta[name], str):
            raise SampleError(key, name, f"must be a string, got {type(meta[name]).__name__}")
    heading = meta.get("heading")
    if heading is not None and (isinstance(heading, bool) or not isinstance(heading, (int, float))
                                or not 0.0 <= heading < 360.0):
        raise SampleError(key, "heading", f"must be degrees in [0, 360), got {heading!r}")
    return meta


def decode_image(key: str, name: str, data: bytes) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im.convert("RGB")
    except Exception as e:  # PIL raises many types on corrupt data
        raise SampleError(key, name, f"undecodable image ({type(e).__name__}: {e})") from None


def decode_pair(raw: dict[str, Any], require_sat: bool = True) -> PairSample:
    """A raw WebDataset sample (bytes per extension) -> PairSample, or SampleError."""
    key = str(raw.get("__key__", "?"))
    if META not in raw:
        raise SampleError(key, META, "missing")
    try:
        meta = json.loads(raw[META])
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError(key, META, f"bad JSON ({e})") from None
    validate_meta(key, meta)
    if GROUND not in raw:
        raise SampleError(key, GROUND, "missing")
    ground = decode_image(key, GROUND, raw[GROUND])
    if SAT in raw:
        sat = decode_image(key, SAT, raw[SAT])
    elif require_sat:
        raise SampleError(key, SAT, "missing (this reader needs ground/satellite pairs)")
    else:
        sat = None
    return PairSample(key, ground, sat, meta)


def encode_jpeg(im: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
