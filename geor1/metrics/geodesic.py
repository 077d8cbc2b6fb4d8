"""Geolocation and pairing metrics as torchmetrics Metrics, correct under DDP.

Conventions, stated next to every table geor1 writes: great-circle distance by haversine on a sphere of radius
6371.0088 km (`geor1.geo`); a prediction within a threshold counts when `d <= threshold`; GeoScore = 5000 *
exp(-d / 1492.7 km), unrounded. An unparseable answer is a failure: it stays in the denominator of every accuracy
(as a miss) and is reported as `unparseable_share`; distance statistics (mean, median, GeoScore) are over the parsed
answers and say so in their names.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from geor1.geo import GEOSCORE_SCALE_KM, haversine_km
from geor1.metrics.intervals import wilson_interval

THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)


class GeodesicError(Metric):
    """Accumulates geolocation predictions; `compute()` gives acc@1/25/200/750/2500 km, mean and median km,
    GeoScore mean, the unparseable share, city/country accuracy when hits are given, and continent accuracy when
    continent hits are given.

    update(pred_lat, pred_lon, true_lat, true_lon, parsed, city_hit=None, country_hit=None, continent_hit=None): all
    [N]; predictions where `parsed` is False are ignored (their values may be anything) and counted as failures (a
    hit counts only where parsed). Continent accuracy has its own denominator (`continent_labelled`, every row of
    each update that gave continent hits), so it may be given on updates without city/country hits and vice versa.
    """

    full_state_update = False
    # metric states (add_state), declared for the type checker
    distances: list[Tensor]  # one tensor while compute() runs after a DDP sync: compute() handles both
    total: Tensor
    unparsed: Tensor
    city_hits: Tensor
    country_hits: Tensor
    labelled: Tensor
    continent_hits: Tensor
    continent_labelled: Tensor

    def __init__(self, thresholds_km: tuple[float, ...] = THRESHOLDS_KM) -> None:
        super().__init__()
        self.thresholds_km = thresholds_km
        self.add_state("distances", default=[], dist_reduce_fx="cat")  # parsed predictions only, km
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("unparsed", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("city_hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("country_hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("labelled", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("continent_hits", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("continent_labelled", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        pred_lat: Tensor,
        pred_lon: Tensor,
        true_lat: Tensor,
        true_lon: Tensor,
        parsed: Tensor,
        city_hit: Tensor | None = None,
        country_hit: Tensor | None = None,
        continent_hit: Tensor | None = None,
    ) -> None:
        parsed = parsed.bool()
        d = haversine_km(
            pred_lat[parsed].double(), pred_lon[parsed].double(), true_lat[parsed].double(), true_lon[parsed].double()
        )
        self.distances.append(d.to(self.device))
        self.total += parsed.numel()
        self.unparsed += int((~parsed).sum())
        if city_hit is not None and country_hit is not None:
            self.city_hits += int((city_hit.bool() & parsed).sum())
            self.country_hits += int((country_hit.bool() & parsed).sum())
            self.labelled += parsed.numel()
        if continent_hit is not None:
            self.continent_hits += int((continent_hit.bool() & parsed).sum())
            self.continent_labelled += parsed.numel()

    def compute(self) -> dict[str, Tensor]:
        has = isinstance(self.distances, Tensor) or len(self.distances) > 0  # a list, or one tensor after a DDP sync
        d = dim_zero_cat(self.distances) if has else torch.zeros(0, dtype=torch.float64)
        n = max(int(self.total), 1)
        out = {f"acc@{t:g}km": torch.tensor(float((d <= t).sum()) / n) for t in self.thresholds_km}
        nan = torch.tensor(math.nan)
        out["mean_km_parsed"] = d.mean() if len(d) else nan
        out["median_km_parsed"] = d.quantile(0.5) if len(d) else nan  # the exact median over every rank's values
        out["geoscore_mean_parsed"] = (5000.0 * torch.exp(-d / GEOSCORE_SCALE_KM)).mean() if len(d) else nan
        out["unparseable_share"] = torch.tensor(float(self.unparsed) / n)
        out["n"] = torch.tensor(int(self.total))
        if int(self.labelled):
            out["city_acc"] = torch.tensor(float(self.city_hits) / int(self.labelled))
            out["country_acc"] = torch.tensor(float(self.country_hits) / int(self.labelled))
        if int(self.continent_labelled):
            out["continent_acc"] = torch.tensor(float(self.continent_hits) / int(self.continent_labelled))
        return out


class PairingAccuracy(Metric):
    """Pairing accuracy with a Wilson 95% interval. update(correct: [N] bool)."""

    full_state_update = False
    correct: Tensor
    total: Tensor

    def __init__(self, z: float = 1.959964) -> None:
        super().__init__()
        self.z = z
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, correct: Tensor) -> None:
        self.correct += int(correct.bool().sum())
        self.total += correct.numel()

    def compute(self) -> dict[str, Tensor]:
        k, n = int(self.correct), int(self.total)
        lo, hi = wilson_interval(k, n, self.z)
        return {
            "pairing_acc": torch.tensor(k / n if n else 0.0, dtype=torch.float64),
            "ci95_low": torch.tensor(lo),
            "ci95_high": torch.tensor(hi),
            "n": torch.tensor(n),
        }
