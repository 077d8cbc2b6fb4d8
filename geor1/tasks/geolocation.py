"""Geolocation: where on Earth was the ground-level photo taken, answered as coordinates (+ city, country code).

Shard JSON (pair shards, GeoWorld, converted benchmarks): `lat`, `lon` (WGS84 degrees), optional `city` and
`country` (ISO 3166-1 alpha-2); image `ground.jpg`. The answer is "lat, lon (City, CC)" inside <answer></answer>,
read by `geor1.answers.parse_coordinates` / `parse_place` on the whole answer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from geor1.answers import normalize_name, parse_coordinates, parse_place
from geor1.geo import GEOSCORE_SCALE_KM, check_lat_lon, haversine_km
from geor1.reading import Reading, read_point
from geor1.tasks.base import TargetError, Task, format_rate, mean_tokens

QUESTION = (
    "Where on Earth was this picture taken? Think step by step inside <think></think>, then answer "
    "inside <answer></answer> with the latitude and longitude in decimal degrees followed by "
    "(City, country code), e.g. <answer>48.85660, 2.35220 (Paris, FR)</answer>."
)
CORRECT_KM = 25.0  # an answer this close counts as correct (length reward, fact-check)


@dataclass(frozen=True)
class GeoTarget:
    """The true place: WGS84 degrees, and its city and country code when known.

    >>> GeoTarget(48.8566, 2.3522, "Paris", "FR").country
    'FR'
    """

    lat: float
    lon: float
    city: str | None = None
    country: str | None = None
    task: ClassVar[str] = "geolocate"

    def __post_init__(self) -> None:
        reason = check_lat_lon(self.lat, self.lon)
        if reason:
            raise TargetError(reason.split()[0], reason)
        for name in ("city", "country"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TargetError(name, f"must be a string or null, got {type(value).__name__}")


@dataclass(frozen=True)
class GeoAnswer:
    """A read answer: the point, and the place named after it when there is one."""

    lat: float
    lon: float
    city: str | None = None
    country: str | None = None

    @property
    def point(self) -> tuple[float, float]:
        return self.lat, self.lon


@dataclass(frozen=True)
class GeolocationTask(Task[GeoTarget, GeoAnswer]):
    """Geolocation: correct within `correct_km` of the truth; reward exp(-d / `scale_km`) (GeoScore / 5000).

    >>> t = GeoTarget(48.8566, 2.3522)
    >>> task = GeolocationTask()
    >>> task.is_correct("<answer>48.85, 2.35 (Paris, FR)</answer>", t), task.reward("<answer>no idea</answer>", t)
    (True, 0.0)
    """

    correct_km: float = CORRECT_KM
    scale_km: float = GEOSCORE_SCALE_KM
    name: ClassVar[str] = "geolocate"
    target_type: ClassVar[type] = GeoTarget

    def prompt(self, target: GeoTarget) -> str:
        """1 ground view."""
        return "<image>\n" + QUESTION

    def image_names(self, target: GeoTarget) -> list[str]:
        return ["ground.jpg"]

    def target_from_meta(self, key: str, meta: Mapping[str, Any]) -> GeoTarget:
        from geor1.data.schema import SampleError

        for name in ("lat", "lon"):
            if name not in meta:
                raise SampleError(key, name, "required field is missing")
        try:
            return GeoTarget(meta["lat"], meta["lon"], meta.get("city"), meta.get("country"))
        except TargetError as e:
            raise SampleError(key, e.field, e.reason) from None

    def target_to_meta(self, target: GeoTarget) -> dict[str, Any]:
        meta: dict[str, Any] = {"lat": target.lat, "lon": target.lon}
        meta.update({name: getattr(target, name) for name in ("city", "country") if getattr(target, name) is not None})
        return meta

    def parse_answer(self, answer: str) -> GeoAnswer | None:
        """The point answered (and the "(City, CC)" after it), or None when no point can be read.

        >>> GeolocationTask().parse_answer("48.85660, 2.35220 (Paris, FR)")
        GeoAnswer(lat=48.8566, lon=2.3522, city='Paris', country='FR')
        """
        coords = parse_coordinates(answer)
        if coords is None:
            return None
        city, country = parse_place(answer)
        return GeoAnswer(coords[0], coords[1], city, country)

    def read(self, text: str) -> Reading:
        """Evaluation reading of any model's output (geor1.reading.read_point)."""
        return read_point(text)

    @staticmethod
    def distance_km(answer: GeoAnswer, target: GeoTarget) -> float:
        """Great-circle distance (km) from an answered point to the truth."""
        return float(haversine_km(target.lat, target.lon, answer.lat, answer.lon))

    def error_km(self, text: str, target: GeoTarget) -> float | None:
        """Distance (km) from the completion's answered point to the truth; None when no point can be read."""
        ans = self.parse(text)
        return None if ans is None else self.distance_km(ans, target)

    def is_correct(self, text: str, target: GeoTarget) -> bool:
        d = self.error_km(text, target)
        return d is not None and d <= self.correct_km

    def reward(self, text: str, target: GeoTarget) -> float:
        """exp(-d / scale_km) for the point answered; 0 when none can be read."""
        d = self.error_km(text, target)
        return 0.0 if d is None else math.exp(-d / self.scale_km)

    def score(self, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """GeodesicError metrics (a model must answer inside <answer></answer>), format rate, mean completion
        tokens; prediction rows as `geodesic_metrics` writes them, plus the text and its token count."""
        predictions = {}
        for r in rows:
            ans = self.parse(r["text"])
            predictions[r["key"]] = None if ans is None else ans.point
        metrics, scored = geodesic_metrics(predictions, {r["key"]: r["target"] for r in rows})
        metrics["format_rate"] = format_rate(rows)
        metrics["mean_completion_tokens"] = mean_tokens(rows)
        preds = [{**row, "text": r["text"], "tokens": r["tokens"]} for row, r in zip(scored, rows, strict=True)]
        return metrics, preds


def geodesic_metrics(
    predictions: Mapping[str, tuple[float, float] | None], truth: Mapping[str, GeoTarget]
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """predictions: id -> (lat, lon) or None; truth: id -> GeoTarget -> (GeodesicError metrics, one row per truth
    id). Every truth id counts: a missing or unparseable prediction is a failure. City / country accuracy (by
    offline reverse geocoding of the predicted point) when every truth has a country; continent accuracy (GeoNames'
    continent of the predicted point's country vs. that of the true country, `geor1.data.continents`) when, besides,
    every truth country is a 2-letter code that table knows (a country *name* gives no continent)."""
    import torch

    from geor1 import Geor1Error
    from geor1.data.continents import continent_of
    from geor1.data.places import reverse_geocode
    from geor1.metrics.geodesic import GeodesicError

    ids = list(truth)
    if not ids:
        raise Geor1Error("no truth rows to score against")
    pred = [predictions.get(i) for i in ids]
    parsed = torch.tensor([p is not None for p in pred])
    plat = torch.tensor([p[0] if p else 0.0 for p in pred], dtype=torch.float64)
    plon = torch.tensor([p[1] if p else 0.0 for p in pred], dtype=torch.float64)
    tlat = torch.tensor([float(truth[i].lat) for i in ids], dtype=torch.float64)
    tlon = torch.tensor([float(truth[i].lon) for i in ids], dtype=torch.float64)
    labelled = all(truth[i].country for i in ids)
    true_continent = [continent_of(truth[i].country) for i in ids]
    continents = labelled and all(c is not None for c in true_continent)
    city_hit = country_hit = continent_hit = None
    nearest: list[Any] = [None] * len(ids)
    if labelled and bool(parsed.any()):
        found = reverse_geocode(plat[parsed].numpy(), plon[parsed].numpy())
        it = iter(found)
        nearest = [next(it) if ok else None for ok in parsed.tolist()]
        city_hit = torch.tensor(
            [
                n is not None and normalize_name(n.name) == normalize_name(truth[i].city)
                for n, i in zip(nearest, ids, strict=True)
            ]
        )
        country_hit = torch.tensor(
            [n is not None and n.country == str(truth[i].country).upper() for n, i in zip(nearest, ids, strict=True)]
        )
        if continents:
            continent_hit = torch.tensor(
                [n is not None and continent_of(n.country) == c for n, c in zip(nearest, true_continent, strict=True)]
            )
    elif labelled:
        city_hit = country_hit = torch.zeros(len(ids), dtype=torch.bool)
        if continents:
            continent_hit = torch.zeros(len(ids), dtype=torch.bool)
    metric = GeodesicError()
    metric.update(plat, plon, tlat, tlon, parsed, city_hit, country_hit, continent_hit)
    metrics = {k: float(v) for k, v in metric.compute().items()}
    rows = []
    for j, i in enumerate(ids):
        p = pred[j]
        rows.append(
            {
                "id": i,
                "lat": p[0] if p else "",
                "lon": p[1] if p else "",
                "parsed": int(p is not None),
                "km": round(float(haversine_km(tlat[j], tlon[j], p[0], p[1])), 3) if p else "",
                "pred_city": nearest[j].name if nearest[j] else "",
                "pred_country": nearest[j].country if nearest[j] else "",
            }
        )
    return metrics, rows
