"""The sample schema of a ground/satellite pair shard, and its validation.

One sample = `<key>.ground.jpg` (+ `<key>.sat.jpg`, absent for ground-only benchmarks) + `<key>.json` with
`lat`, `lon` (required, WGS84 degrees), `city`, `country` (ISO 3166-1 alpha-2), `source`, optional `heading`
(degrees clockwise from north), `date`, `split`.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from geor1.geo import check_lat_lon

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

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


PLACELESS_TASKS = frozenset({"describe"})
"""Tasks whose samples are not of one place (`geor1.tasks.describe`): their JSON needs no lat/lon."""


def validate_meta(key: str, meta: object) -> dict[str, Any]:
    """The metadata, checked; SampleError naming the field otherwise. `lat` and `lon` are required, except in a
    sample of a task of PLACELESS_TASKS (checked when present)."""
    if not isinstance(meta, dict):
        raise SampleError(key, "json", f"metadata must be a JSON object, got {type(meta).__name__}")
    placeless = meta.get("task") in PLACELESS_TASKS
    for name in ("lat", "lon"):
        if name not in meta and not placeless:
            raise SampleError(key, name, "required field is missing")
    if "lat" in meta or "lon" in meta:
        reason = check_lat_lon(meta.get("lat"), meta.get("lon"))
        if reason:
            raise SampleError(key, reason.split()[0], reason)
    country = meta.get("country")
    if country is not None and (not isinstance(country, str) or not _COUNTRY.fullmatch(country)):
        raise SampleError(key, "country", f"must be an ISO 3166-1 alpha-2 code like 'FR', got {country!r}")
    for name in OPTIONAL_STR:
        if meta.get(name) is not None and not isinstance(meta[name], str):
            raise SampleError(key, name, f"must be a string, got {type(meta[name]).__name__}")
    heading = meta.get("heading")
    if heading is not None and (
        isinstance(heading, bool) or not isinstance(heading, (int, float)) or not 0.0 <= heading < 360.0
    ):
        raise SampleError(key, "heading", f"must be degrees in [0, 360), got {heading!r}")
    return meta


_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking its marker segments; None when it is not a JPEG or its
    header cannot be read (the caller then decodes through PIL, which says why)."""
    if data[:2] != b"\xff\xd8":
        return None
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _SOF:
            height, width = struct.unpack_from(">HH", data, i + 5)
            return (width, height) if width and height else None
        i += 2 + ((data[i + 2] << 8) | data[i + 3])
    return None


def _jpeg_chw(data: bytes) -> torch.Tensor | None:
    """A 3-channel JPEG decoded by libjpeg-turbo through torchvision, [3, H, W] uint8 (the same pixels as PIL's
    decoder, without its per-image Python); None for anything else (grey, CMYK, not a JPEG, damaged, over PIL's
    pixel limit), which PIL then decodes or rejects. torchvision fails on a truncated JPEG (PIL then refuses it); on
    damage libjpeg only warns about, both decoders accept it with the same pixels."""
    if data[:2] != b"\xff\xd8":
        return None
    dims, limit = jpeg_size(data), Image.MAX_IMAGE_PIXELS
    if dims is None or (limit is not None and dims[0] * dims[1] > limit):
        return None  # PIL's decompression-bomb check (a warning, or an error past twice the limit) decides
    import torch

    op = _decode_jpeg_op()
    if op is None:
        return None
    try:
        chw = op(torch.frombuffer(bytearray(data), dtype=torch.uint8), 0, False)  # 0: UNCHANGED
    except RuntimeError:
        return None
    return chw if chw.shape[0] == 3 else None


@functools.cache
def _decode_jpeg_op() -> Callable[..., torch.Tensor] | None:
    """torchvision's JPEG decoding operator (data, mode, apply_exif_orientation), called directly: its Python wrapper
    `torchvision.io.decode_jpeg` adds a DeprecationWarning and bookkeeping per image, which costs a tenth of decoding
    a small JPEG. Checked once on a tiny JPEG: when it is missing or its signature changed, a warning says so and PIL
    decodes every image (the same pixels, slower)."""
    import torch

    try:
        import torchvision.io.image  # noqa: F401  (loads the image operators)

        op = torch.ops.image.decode_jpeg
        probe = io.BytesIO()
        Image.new("RGB", (2, 2), (200, 30, 60)).save(probe, format="JPEG")
        if op(torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8), 0, False).shape != (3, 2, 2):
            raise RuntimeError("unexpected output shape")
    except (ImportError, AttributeError, RuntimeError) as e:
        log.warning("torchvision's JPEG decoder is unusable (%s): decoding with PIL, slower", e)
        return None
    return op


def _decode_pil(key: str, name: str, data: bytes, draft: tuple[int, int] | None = None) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        if draft is not None:
            im.draft("RGB", draft)  # JPEG: decode at the smallest 1/2, 1/4, 1/8 scale still >= draft (w, h)
        im.load()
        return im if im.mode == "RGB" else im.convert("RGB")
    except Exception as e:  # PIL raises many types on corrupt data
        raise SampleError(key, name, f"undecodable image ({type(e).__name__}: {e})") from None


def decode_image(key: str, name: str, data: bytes) -> Image.Image:
    """Image bytes -> an RGB PIL image; SampleError naming the key and file when they do not decode."""
    chw = _jpeg_chw(data)
    if chw is None:
        return _decode_pil(key, name, data)
    import numpy as np

    # libjpeg's [H, W, 3] buffer itself (contiguous: no copy); a torch copy here would wake its thread pool
    hwc = np.ascontiguousarray(chw.permute(1, 2, 0).numpy())
    return Image.frombuffer("RGB", (hwc.shape[1], hwc.shape[0]), hwc, "raw", "RGB", 0, 1)


def decode_image_tensor(key: str, name: str, data: bytes, size: tuple[int, int]) -> torch.Tensor:
    """Image bytes -> [H, W, 3] uint8 (contiguous) at size=(H, W), resized bilinearly with antialiasing (the layout
    libjpeg writes: no transposing copy per image; a batch of them stacks into a channels-last [B, 3, H, W] view
    for free, `collate_tensors`). A JPEG at least twice
    the target size in both sides is decoded at reduced size (PIL `draft`: libjpeg scales in the DCT, 4-64x less
    work), any other straight to a tensor (torchvision). SampleError naming the key and file when they do not decode.
    """
    import numpy as np
    import torch
    from torchvision.transforms.v2.functional import resize

    height, width = size
    dims = jpeg_size(data)
    if dims is not None and dims[0] >= 2 * width and dims[1] >= 2 * height:
        im = _decode_pil(key, name, data, draft=(width, height))
        if im.size != (width, height):
            im = im.resize((width, height), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
    chw = _jpeg_chw(data)  # a [3, H, W] view of libjpeg's [H, W, 3] buffer
    if chw is None:
        hwc = torch.from_numpy(np.asarray(_decode_pil(key, name, data), dtype=np.uint8).copy())
    else:
        hwc = chw.permute(1, 2, 0)
    if hwc.shape[:2] != (height, width):
        hwc = resize(hwc.permute(2, 0, 1), [height, width], antialias=True).permute(1, 2, 0).contiguous()
    return hwc


def read_meta(raw: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(key, validated metadata) of a raw sample, or SampleError naming the key and the field (missing or bad JSON,
    invalid lat/lon, ...)."""
    key = str(raw.get("__key__", "?"))
    if META not in raw:
        raise SampleError(key, META, "missing")
    try:
        meta = json.loads(raw[META])
    except (ValueError, UnicodeDecodeError) as e:
        raise SampleError(key, META, f"bad JSON ({e})") from None
    return key, validate_meta(key, meta)


def decode_pair(raw: dict[str, Any], require_sat: bool = True) -> PairSample:
    """A raw WebDataset sample (bytes per extension) -> PairSample, or SampleError."""
    key, meta = read_meta(raw)
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
