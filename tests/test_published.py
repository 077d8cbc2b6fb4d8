"""Published reference rows (units, keys, sources), the measured-vs-published Markdown table, the eval configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from geor1 import Geor1Error
from geor1.eval.published import COLUMNS, PUBLISHED, published_rows, published_table

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = {"acc@1km", "acc@25km", "acc@200km", "acc@750km", "acc@2500km", "city_acc", "country_acc", "continent_acc"}
METRICS = FRACTIONS | {"mean_km", "median_km", "geoscore"}
BENCHMARKS = {"imageo_gss", "imageo_upc", "im2gps3k", "yfcc4k", "mp16_reason", "osv5m", "geoworld"}
EVAL_CONFIGS = ("im2gps3k", "yfcc4k", "imageo_gss", "imageo_upc", "mp16_reason", "osv5m")


def test_rows_are_fractions_with_sources():
    assert set(PUBLISHED) == BENCHMARKS
    assert PUBLISHED["geoworld"] == []
    for bench, rows in PUBLISHED.items():
        for row in rows:
            assert row["model"] and len(row["source"]) > 20, (bench, row)
            metrics = set(row) - {"model", "source"}
            assert metrics and metrics <= METRICS, (bench, metrics - METRICS)
            for k in metrics & FRACTIONS:
                assert 0.0 <= row[k] <= 1.0, (bench, row["model"], k)  # fractions, never percentages
            for k in metrics - FRACTIONS:
                assert row[k] > 1.0, (bench, row["model"], k)


def test_required_rows():
    gss = {r["model"]: r for r in PUBLISHED["imageo_gss"]}
    assert {k: gss["Geo-R1"][k] for k in ("city_acc", "country_acc", "mean_km", "median_km")} == {
        "city_acc": 0.3272,
        "country_acc": 0.8146,
        "mean_km": 568.32,
        "median_km": 69.40,
    }
    assert (gss["GeoCLIP"]["city_acc"], gss["GeoCLIP"]["country_acc"]) == (0.1086, 0.6361)
    assert (gss["GeoCLIP"]["mean_km"], gss["GeoCLIP"]["median_km"]) == (943.48, 266.90)
    assert "2510.00072" in gss["Geo-R1"]["source"] and "2510.00072" in gss["GeoCLIP"]["source"]
    (mp16,) = PUBLISHED["mp16_reason"]
    assert (mp16["model"], mp16["acc@1km"], mp16["acc@2500km"]) == ("Geo-R1", 0.1798, 0.9356)


def test_published_rows_copies_and_errors():
    rows = published_rows("IM2GPS3K ")
    rows[0]["acc@1km"] = 1.0
    assert PUBLISHED["im2gps3k"][0]["acc@1km"] == 0.1411  # a copy: the table stays as published
    assert published_rows(None) == []
    with pytest.raises(Geor1Error, match="known: geoworld, im2gps3k"):
        published_rows("im2gps")


def _cells(line: str) -> list[str]:
    assert line.startswith("| ") and line.endswith(" |")
    return [c.strip() for c in line[2:-2].split(" | ")]


def test_table_measured_row_first_then_published():
    measured = {
        "acc@1km": torch.tensor(0.12345),
        "acc@25km": 0.5,
        "acc@200km": 0.6,
        "acc@750km": 0.7,
        "acc@2500km": 0.9,
        "mean_km_parsed": 1234.56,
        "median_km_parsed": 78.94,
        "geoscore_mean_parsed": 2500.04,
        "city_acc": 0.25,
        "country_acc": 0.75,
        "continent_acc": 0.875,
        "unparseable_share": 0.0625,
        "n": torch.tensor(16),
        "format_rate": 0.9,  # other keys are ignored
    }
    lines = published_table(measured, "imageo_gss", label="Qwen2.5-VL-7B")
    assert len(lines) == 2 + 1 + 2
    header = _cells(lines[0])
    assert header[:3] == ["model", "row", "n"] and header[-1] == "source"
    assert header[3:-1] == [c[0] for c in COLUMNS]
    assert set(lines[1]) <= {"|", "-"}
    row = _cells(lines[2])
    assert row[:3] == ["Qwen2.5-VL-7B", "measured", "16"]
    assert row[3:-1] == [
        "0.123", "0.500", "0.600", "0.700", "0.900", "1234.6", "78.9", "2500.0", "0.250", "0.750", "0.875", "0.062",
    ]  # fmt: skip
    geo_r1 = _cells(lines[3])
    assert geo_r1[:3] == ["Geo-R1", "published", "-"]
    values = dict(zip(header, geo_r1, strict=True))
    assert (values["mean km"], values["median km"], values["city"], values["country"]) == (
        "568.3",
        "69.4",
        "0.327",
        "0.815",
    )
    assert values["acc@1km"] == values["continent"] == values["unparseable"] == values["GeoScore"] == "-"
    assert "2510.00072" in values["source"]
    assert _cells(lines[4])[0] == "GeoCLIP"
    assert all(len(_cells(line)) == len(header) for line in lines if not set(line) <= {"|", "-"})


def test_table_without_benchmark_and_missing_values():
    lines = published_table({"acc@1km": math.nan, "n": 3}, None)
    assert len(lines) == 3
    row = _cells(lines[2])
    assert row[:4] == ["measured", "measured", "3", "-"] and set(row[4:-1]) == {"-"}
    assert "6371.0088" in row[-1]


def test_table_escapes_pipes_in_labels():
    lines = published_table({}, "geoworld", label="a|b")
    assert lines[2].startswith("| a\\|b | measured | - |")


@pytest.mark.parametrize("name", EVAL_CONFIGS)
def test_eval_configs_name_their_benchmark(name):
    text = (ROOT / "configs" / "eval" / f"{name}.yaml").read_text()
    cfg = yaml.safe_load(text)
    args = cfg["model"]["init_args"]
    assert cfg["model"]["class_path"] == "geor1.eval.module.EvalModule"
    assert args["benchmark"] == name and published_rows(args["benchmark"]) == PUBLISHED[name]
    assert args["out_dir"] == f"runs/eval/{name}" and args["task"] == "geolocate"
    assert args["policy"]["class_path"] == "geor1.model.Policy"
    assert set(args["policy"]["init_args"]) == {"path", "dtype", "max_pixels"}
    data = cfg["data"]["init_args"]
    assert cfg["data"]["class_path"] == "geor1.data.chat.ChatShardDataModule"
    assert data["roots"] == f"data/{name}" and data["test_split"] == "test" and data["val_split"] == ""
    assert f"--out data/{name}" in text  # the header's convert command writes what the config reads
    assert f"geor1 test --config configs/eval/{name}.yaml" in text
    assert f"geor1 predict --config configs/eval/{name}.yaml" in text
