"""The demo's evaluation arithmetic: the mean-location baseline, per-place hits and the paired comparisons,
against plain computations."""

from __future__ import annotations

import numpy as np
import pytest

from geor1.demo.evaluate import MAX_ERROR_KM, compare_geolocation, geo_hits, mean_location
from geor1.metrics.intervals import paired_bootstrap
from geor1.tasks import GeoTarget


def test_paired_bootstrap_against_a_plain_resampling_loop():
    rng = np.random.default_rng(1)
    a, b = rng.exponential(1000.0, 50), rng.exponential(800.0, 50)
    d = paired_bootstrap(a, b, resamples=500, seed=3)
    draws = np.random.default_rng(3).integers(0, 50, size=(500, 50))
    plain = [np.median(b[i]) - np.median(a[i]) for i in draws]
    assert d["diff"] == pytest.approx(np.median(b) - np.median(a))
    assert (d["ci95_low"], d["ci95_high"]) == pytest.approx(tuple(np.percentile(plain, [2.5, 97.5])))
    same = paired_bootstrap(a, a)
    assert same == {"diff": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1.0, 2.0], [1.0])


def test_mean_location_is_the_normalised_mean_of_unit_vectors(tmp_path):
    import json

    from geor1.data.geoworld import build_geoworld
    from geor1.data.reader import iter_raw_samples, shard_urls

    world = build_geoworld(tmp_path / "gw", num_train=12, num_val=2, num_test=2, seed=3)
    lat, lon = mean_location(world)
    pts = [json.loads(r["json"]) for r in iter_raw_samples(shard_urls(world, "train"))]
    p, q = np.radians([m["lat"] for m in pts]), np.radians([m["lon"] for m in pts])
    v = np.array([np.cos(p) * np.cos(q), np.cos(p) * np.sin(q), np.sin(p)]).sum(1)
    assert (lat, lon) == pytest.approx(
        (np.degrees(np.arcsin(v[2] / np.linalg.norm(v))), np.degrees(np.arctan2(v[1], v[0])))
    )


def test_geo_hits_and_the_indirect_comparison_count_unreadable_answers_as_misses():
    truth = [GeoTarget(48.85, 2.35, "Paris", "FR"), GeoTarget(40.71, -74.0, "New York", "US")]
    first = [
        {"parsed": 1, "km": 600.0, "pred_country": "FR"},
        {"parsed": 0, "km": "", "pred_country": ""},
    ]
    second = [
        {"parsed": 1, "km": 2400.0, "pred_country": "DE"},
        {"parsed": 1, "km": 100.0, "pred_country": "US"},
    ]
    h1, h2 = geo_hits(first, truth), geo_hits(second, truth)
    assert h1 == {
        "acc@750km": [1.0, 0.0],
        "acc@2500km": [1.0, 0.0],
        "country_acc": [1.0, 0.0],
        "error_km": [600.0, MAX_ERROR_KM],
    }
    assert h2["acc@750km"] == [0.0, 1.0] and h2["acc@2500km"] == [1.0, 1.0] and h2["country_acc"] == [0.0, 1.0]
    comp = compare_geolocation(h1, h2)
    assert comp["acc@2500km"]["diff"] == pytest.approx(0.5) and comp["acc@750km"]["diff"] == 0.0
    assert comp["median_km"]["diff"] == pytest.approx(np.median([2400.0, 100.0]) - np.median([600.0, MAX_ERROR_KM]))


def test_geo_hits_on_scored_rows_give_back_the_metrics_of_the_scorer():
    """The baseline comparison reads `geodesic_metrics`' own rows: per-place hits averaged = its acc@ and country."""
    from geor1.tasks.geolocation import geodesic_metrics

    truth = {
        "a": GeoTarget(48.85, 2.35, "Paris", "FR"),
        "b": GeoTarget(52.52, 13.40, "Berlin", "DE"),
        "c": GeoTarget(40.71, -74.0, "New York", "US"),
        "d": GeoTarget(-33.87, 151.21, "Sydney", "AU"),
    }
    pred = {"a": (49.0, 2.5), "b": (48.85, 2.35), "c": (41.0, -73.9), "d": None}
    metrics, rows = geodesic_metrics(pred, truth)
    hits = geo_hits(rows, list(truth.values()))
    for name in ("acc@750km", "acc@2500km", "country_acc"):
        assert np.mean(hits[name]) == pytest.approx(metrics[name])
    assert hits["error_km"][3] == MAX_ERROR_KM
