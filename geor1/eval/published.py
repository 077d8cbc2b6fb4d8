"""Published reference rows for the paper's geolocation benchmarks, and the Markdown table that puts a measured row
beside them.

Every number below is copied from the source its row names, converted to geor1's units: accuracies as fractions in
[0, 1] (a paper's 34.47 % is 0.3447), distances in km, GeoScore on its 0-5000 scale. A row carries only the metrics
its source reports. Metric names are geor1's: "acc@1km" ... "acc@2500km", "mean_km", "median_km", "geoscore",
"city_acc", "country_acc", "continent_acc". Published numbers come from other code with other conventions (distance
formula, Earth radius, `<` vs `<=`, how unparseable answers count, how city / country are matched): compare them
with care; geor1's own conventions are in `geor1.metrics.geodesic`.

What could not be verified is left out rather than guessed: see each benchmark's comment.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from geor1 import Geor1Error

# The geolocation prompt of Geo-R1's evaluation (arXiv 2510.00072) could not be verified: the public code ships no
# evaluation script and the paper's appendix text was not reachable here. Configs keep `question: null` (geor1's
# own geolocation prompt, `geor1.tasks.geolocation.QUESTION`) until the exact text is checked against the paper.
GEO_R1_GEOLOCATION_PROMPT: str | None = None

_GEO_R1 = "Geo-R1 (Xu et al., arXiv 2510.00072)"
_GEO_R1_VIA = "as transcribed in geor1's DESIGN.md section 1 (the paper's table itself not re-read for this file)"
_GEOCLIP = "GeoCLIP (Vivanco Cepeda et al., NeurIPS 2023, arXiv 2309.16020)"

PUBLISHED: dict[str, list[dict[str, Any]]] = {
    "imageo_gss": [
        {
            "model": "Geo-R1",
            "source": f"{_GEO_R1}, IMAGEO-Bench GSS table; {_GEO_R1_VIA}",
            "city_acc": 0.3272,
            "country_acc": 0.8146,
            "mean_km": 568.32,
            "median_km": 69.40,
        },
        {
            "model": "GeoCLIP",
            "source": f"{_GEO_R1}, IMAGEO-Bench GSS table (GeoCLIP as the paper's baseline row); {_GEO_R1_VIA}",
            "city_acc": 0.1086,
            "country_acc": 0.6361,
            "mean_km": 943.48,
            "median_km": 266.90,
        },
    ],
    # IMAGEO-Bench UPC (dataset2, 2,929 US points of interest): no published row verified.
    "imageo_upc": [],
    "im2gps3k": [
        {
            "model": "GeoCLIP",
            "source": (
                f"{_GEOCLIP}, Table 1, Im2GPS3k (14.11 / 34.47 / 50.65 / 69.67 / 83.82 % at 1 / 25 / 200 / 750 / 2500 "
                "km), as quoted from that table by public results tables (GeoRanker's main table; READMEs citing "
                "'GeoCLIP own paper, Table 1')"
            ),
            "acc@1km": 0.1411,
            "acc@25km": 0.3447,
            "acc@200km": 0.5065,
            "acc@750km": 0.6967,
            "acc@2500km": 0.8382,
        },
    ],
    "yfcc4k": [
        {
            "model": "GeoCLIP",
            "source": (
                "GeoRanker (2025), main results table, GeoCLIP row on YFCC4K (9.59 / 19.31 / 32.63 % at 1 / 25 / 200 "
                f"km; 750 / 2500 km not verified). Not from {_GEOCLIP} itself: its own table reports YFCC26k, not "
                "YFCC4k"
            ),
            "acc@1km": 0.0959,
            "acc@25km": 0.1931,
            "acc@200km": 0.3263,
        },
    ],
    "mp16_reason": [
        {
            "model": "Geo-R1",
            "source": f"{_GEO_R1}, MP16-Reason table (17.98 % at 1 km, 93.56 % at 2500 km); {_GEO_R1_VIA}",
            "acc@1km": 0.1798,
            "acc@2500km": 0.9356,
        },
    ],
    "osv5m": [
        {
            "model": "OSV-5M baseline (best model)",
            "source": (
                "OpenStreetView-5M (Astruc et al., CVPR 2024, arXiv 2404.18873), model card of osv5m/baseline "
                "(model-index: GeoScore 3361, Haversine distance 1814 km, country 68 %, city 5.9 %; region 39.4 % and "
                "area 10.3 % have no geor1 column). 1814 km is a mean: OSV-5M's metrics/distance_based.py reports "
                "'Haversine' as haversine_sum / count. City / country are OSV-5M's reverse geocoding to its own "
                "area labels, not geor1's"
            ),
            "geoscore": 3361.0,
            "mean_km": 1814.0,
            "country_acc": 0.68,
            "city_acc": 0.059,
        },
    ],
    # GeoWorld is geor1's own synthetic benchmark: nothing is published on it.
    "geoworld": [],
}

# (column title, key in a published row, key in geor1's metrics dict, kind)
COLUMNS: tuple[tuple[str, str, str, str], ...] = (
    ("acc@1km", "acc@1km", "acc@1km", "fraction"),
    ("acc@25km", "acc@25km", "acc@25km", "fraction"),
    ("acc@200km", "acc@200km", "acc@200km", "fraction"),
    ("acc@750km", "acc@750km", "acc@750km", "fraction"),
    ("acc@2500km", "acc@2500km", "acc@2500km", "fraction"),
    ("mean km", "mean_km", "mean_km_parsed", "km"),
    ("median km", "median_km", "median_km_parsed", "km"),
    ("GeoScore", "geoscore", "geoscore_mean_parsed", "score"),
    ("city", "city_acc", "city_acc", "fraction"),
    ("country", "country_acc", "country_acc", "fraction"),
    ("continent", "continent_acc", "continent_acc", "fraction"),
    ("unparseable", "unparseable_share", "unparseable_share", "fraction"),
)

MEASURED_SOURCE = (
    "this run: haversine, R = 6371.0088 km, d <= threshold; km and GeoScore over parsed answers; unparseable = miss"
)


def published_rows(benchmark: str | None) -> list[dict[str, Any]]:
    """The published rows of a benchmark (copies); [] for None. An unknown name is a Geor1Error naming the known
    ones (check it when a run starts, not after the evaluation).

    >>> [r["model"] for r in published_rows("imageo_gss")], published_rows(None), published_rows("geoworld")
    (['Geo-R1', 'GeoCLIP'], [], [])
    """
    if benchmark is None:
        return []
    name = benchmark.strip().lower()
    if name not in PUBLISHED:
        raise Geor1Error(f"no published rows for benchmark {benchmark!r}; known: {', '.join(sorted(PUBLISHED))}")
    return [dict(r) for r in PUBLISHED[name]]


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        x = float(value)  # floats, ints, 0-d tensors, numpy scalars
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _cell(value: Any, kind: str) -> str:
    x = _number(value)
    if x is None:
        return "-"
    return f"{x:.3f}" if kind == "fraction" else f"{x:.1f}"


def _text(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def published_table(measured: Mapping[str, Any], benchmark: str | None, label: str = "measured") -> list[str]:
    """Markdown lines: a header with the paper's columns, the measured row (geor1's metrics dict: `acc@...km`,
    `mean_km_parsed`, `median_km_parsed`, `geoscore_mean_parsed`, `city_acc`, `country_acc`, `continent_acc`,
    `unparseable_share`, `n`) labelled `label`, then the benchmark's published rows marked "published" with their
    source. Fractions print with 3 decimals, km and GeoScore with 1; "-" where a row has no value.

    >>> lines = published_table({"acc@1km": 0.5, "mean_km_parsed": 12.34, "n": 2}, "mp16_reason")
    >>> lines[0].split(" | ")[:5]
    ['| model', 'row', 'n', 'acc@1km', 'acc@25km']
    >>> lines[2].split(" | ")[:7]
    ['| measured', 'measured', '2', '0.500', '-', '-', '-']
    >>> lines[3].split(" | ")[:5], len(lines)
    (['| Geo-R1', 'published', '-', '0.180', '-'], 4)
    """
    titles = ["model", "row", "n", *(c[0] for c in COLUMNS), "source"]
    lines = ["| " + " | ".join(titles) + " |", "|" + "|".join("---" for _ in titles) + "|"]
    n = _number(measured.get("n"))
    cells = [_text(label), "measured", "-" if n is None else str(int(n))]
    cells += [_cell(measured.get(metric_key), kind) for _, _, metric_key, kind in COLUMNS]
    lines.append("| " + " | ".join([*cells, MEASURED_SOURCE]) + " |")
    for row in published_rows(benchmark):
        cells = [_text(row["model"]), "published", "-"]
        cells += [_cell(row.get(row_key), kind) for _, row_key, _, kind in COLUMNS]
        lines.append("| " + " | ".join([*cells, _text(row["source"])]) + " |")
    return lines
