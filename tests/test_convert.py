"""Converters, each on a tiny fixture in its data set's published layout, written here."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import webdataset as wds
from conftest import random_image, run_cli

from geor1 import Geor1Error
from geor1.data.convert import (
    check_lat_lon_columns,
    csv_rows,
    cvact_rows,
    cvcities_rows,
    cvusa_rows,
    utm_to_latlon,
    vigor_rows,
    write_rows,
)
from geor1.geo import haversine_km

RNG = np.random.default_rng(0)


def _img(path, h=20, w=30, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(RNG, h, w).save(path, format=fmt)


def _read(out):
    urls = sorted(str(p) for p in out.glob("*.tar"))
    return {s["__key__"]: s for s in wds.WebDataset(urls, shardshuffle=False).decode("pil")}


def test_csv_im2gps_style_with_a_missing_image_and_iso_fill(tmp_path):
    places = [("a1.jpg", 48.8566, 2.3522), ("b2.jpg", 40.7128, -74.006), ("c3.jpg", -33.87, 151.21)]
    with open(tmp_path / "im2gps3k_places365.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label"])
        for name, lat, lon in places:
            w.writerow([name, "x", lat, lon, 1])
        w.writerow(["missing.jpg", "x", 10, 10, 1])
        w.writerow(["bad_lat.jpg", "x", "north", 10, 1])
    for name, *_ in places + [("bad_lat.jpg",)]:
        _img(tmp_path / "img" / name)
    report = write_rows(
        csv_rows(tmp_path / "im2gps3k_places365.csv", tmp_path / "img"), tmp_path / "out", "im2gps3k", "CC"
    )
    assert report.written == {"test": 3}
    assert {s["key"]: s["field"] for s in report.skipped} == {"missing": "ground.jpg", "bad_lat": "lat"}
    samples = _read(tmp_path / "out")
    assert samples["a1"]["json"]["country"] == "FR" and "sat.jpg" not in samples["a1"]  # ground-only
    assert samples["c3"]["json"]["lat"] == -33.87
    assert json.loads((tmp_path / "out" / "skipped-im2gps3k.json").read_text())[0]["key"] == "missing"


def test_csv_swapped_header_is_detected(tmp_path):
    # an old im2gps3k copy: header says LON,LAT over lat,lon values
    pts = [
        (48.85, 2.35),
        (40.71, -74.0),
        (35.68, 139.69),
        (-23.55, -46.63),
        (55.75, 37.62),
        (19.43, -99.13),
        (-1.29, 36.82),
        (28.61, 77.21),
        (-34.6, -58.38),
        (51.5, -0.12),
        (39.9, 116.4),
        (30.04, 31.24),
    ]
    path = tmp_path / "swapped.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["IMG_ID", "LON", "LAT"])
        for i, (lat, lon) in enumerate(pts):
            w.writerow([f"{i}.jpg", lat, lon])
    land = check_lat_lon_columns(path, "LAT", "LON")
    assert land["land_swapped"] > land["land_as_given"] + 0.2
    rows = list(csv_rows(path, tmp_path, lat_col="LAT", lon_col="LON", swap_lat_lon=True))
    assert (rows[0].meta["lat"], rows[0].meta["lon"]) == (48.85, 2.35)
    # unasked, a swapped CSV is an error naming both fixes, never a warning over swapped coordinates
    with pytest.raises(Geor1Error, match=r"LAT/LON columns look swapped: 25% of 12 points .* 100% read the other"):
        csv_rows(path, tmp_path, lat_col="LAT", lon_col="LON")
    rows = list(csv_rows(path, tmp_path, lat_col="LAT", lon_col="LON", swap_lat_lon=False))  # --lat-lon-check off
    assert (rows[0].meta["lat"], rows[0].meta["lon"]) == (2.35, 48.85)


def test_csv_imageo_style_columns_and_country_names(tmp_path):
    with open(tmp_path / "dataset1_info.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_path", "city", "country", "continent", "latitude", "longitude"])
        w.writerow(["x/p1.png", "Paris", "France", "Europe", 48.8566, 2.3522])
    _img(tmp_path / "imgs" / "x" / "p1.png", fmt="PNG")
    rows = csv_rows(
        tmp_path / "dataset1_info.csv",
        tmp_path / "imgs",
        id_col="image_path",
        lat_col="latitude",
        lon_col="longitude",
        path_col="image_path",
        city_col="city",
        country_col="country",
    )
    write_rows(rows, tmp_path / "out", "imageo_gss", "CC")
    (s,) = _read(tmp_path / "out").values()
    assert s["json"]["country"] == "FR" and s["json"]["country_name"] == "France" and s["json"]["city"] == "Paris"
    assert s["ground.jpg"].size == (30, 20)  # PNG re-encoded as JPEG
    with pytest.raises(Geor1Error, match=r"no column 'IMG_ID' \(columns: image_path"):
        list(csv_rows(tmp_path / "dataset1_info.csv", tmp_path / "imgs"))


def test_vigor_cross_and_same_area(tmp_path):
    for city, (lat, lon) in {"NewYork": (40.71, -74.0), "Chicago": (41.88, -87.63)}.items():
        pano = f"p1,{lat},{lon},.jpg"
        sat = f"satellite_{lat + 0.001}_{lon}.png"
        _img(tmp_path / city / "panorama" / pano, 20, 40)
        _img(tmp_path / city / "satellite" / sat, fmt="PNG")
        line = f"{pano} {sat} 1.0 2.0 s2.png 0 0 s3.png 0 0 s4.png 0 0\n"
        for name in ("pano_label_balanced.txt", "same_area_balanced_train.txt", "same_area_balanced_test.txt"):
            (tmp_path / "splits" / city).mkdir(parents=True, exist_ok=True)
            (tmp_path / "splits" / city / name).write_text(line if name != "same_area_balanced_test.txt" else "")
    rows = list(vigor_rows(tmp_path, "cross", cities=["NewYork", "Chicago"]))
    assert [(r.meta["city"], r.split) for r in rows] == [("NewYork", "train"), ("Chicago", "test")]
    assert rows[1].meta["lat"] == 41.88 and rows[1].meta["sat_lat"] == pytest.approx(41.881)
    report = write_rows(rows, tmp_path / "out", "vigor", "research")
    assert report.written == {"train": 1, "test": 1} and not report.skipped
    assert [r.split for r in vigor_rows(tmp_path, "same", cities=["NewYork"])] == ["train"]


def test_cvusa(tmp_path):
    (tmp_path / "splits").mkdir()
    (tmp_path / "split_locations").mkdir()
    for i, split in ((1, "train"), (2, "val")):
        _img(tmp_path / "bingmap" / "19" / f"000000{i}.jpg")
        _img(tmp_path / "streetview" / "panos" / f"000000{i}.jpg", 20, 60)
        (tmp_path / "splits" / f"{split}-19zl.csv").write_text(
            f"bingmap/19/000000{i}.jpg,streetview/panos/000000{i}.jpg,annotations/000000{i}.png\n"
        )
    (tmp_path / "split_locations" / "all.csv").write_text(
        "38.01,-90.01,38.0,-90.0,0000001\n45.01,-100.01,45.0,-100.0,0000002\n"
    )
    rows = list(cvusa_rows(tmp_path))
    assert [(r.key, r.split, r.meta["lat"], r.meta["lon"]) for r in rows] == [
        ("cvusa_0000001", "train", 38.0, -90.0),
        ("cvusa_0000002", "test", 45.0, -100.0),
    ]
    assert write_rows(rows, tmp_path / "out", "cvusa", "research").written == {"train": 1, "test": 1}


def test_utm_to_latlon():
    lat, lon = utm_to_latlon(np.array([500000.0]), np.array([10_000_000.0]), 55, south=True)
    assert abs(lat[0]) < 1e-9 and abs(lon[0] - 147.0) < 1e-9  # zone 55's central meridian at the equator
    lat, lon = utm_to_latlon(np.array([500000.0, 501000.0]), np.array([6_090_000.0, 6_090_000.0]), 55, True)
    assert -36 < lat[0] < -35  # Canberra's latitude band
    # 1 km of easting on the central meridian is 1/0.9996 km along the ellipsoid's parallel, whose radius of
    # curvature N differs from the haversine sphere's
    a, e2 = 6378.137, 0.00669438
    n = a / np.sqrt(1 - e2 * np.sin(np.radians(lat[0])) ** 2)
    assert haversine_km(lat[0], lon[0], lat[1], lon[1]) == pytest.approx(6371.0088 / n / 0.9996, rel=1e-4)


def test_cvact(tmp_path):
    from scipy.io import savemat

    ids = ["idA", "idB", "idC"]
    for pid in ids:
        _img(tmp_path / "streetview" / f"{pid}_grdView.jpg", 20, 60)
        _img(tmp_path / "satview_polish" / f"{pid}_satView_polish.jpg")
    savemat(
        tmp_path / "ACT_data.mat",
        {
            "panoIds": np.array(ids, dtype=object),
            "utm": np.array([[693000.0, 6090000.0]] * 3),
            "trainSet": {"trainInd": np.array([[1], [3]])},
            "valSet": {"valInd": np.array([[2]])},
        },
    )
    rows = list(cvact_rows(tmp_path))
    assert [(r.key, r.split) for r in rows] == [("cvact_idA", "train"), ("cvact_idC", "train"), ("cvact_idB", "val")]
    assert -36 < rows[0].meta["lat"] < -35 and 149 < rows[0].meta["lon"] < 150  # Canberra
    assert write_rows(rows, tmp_path / "out", "cvact", "research").written == {"train": 2, "val": 1}


def test_cvcities_and_cli(tmp_path):
    for city, (lat, lon) in {"Paris": (48.85, 2.35), "Tokyo": (35.68, 139.69)}.items():
        _img(tmp_path / "cvc" / city / "ground" / "0001.jpg", 20, 40)
        _img(tmp_path / "cvc" / city / "satellite" / "0001.jpg")
        (tmp_path / "cvc" / city / f"{city}.csv").write_text(f"name,lat,lon\n0001.jpg,{lat},{lon}\n")
    rows = list(cvcities_rows(tmp_path / "cvc", test_cities=["Tokyo"]))
    assert [(r.meta["city"], r.split) for r in rows] == [("Paris", "train"), ("Tokyo", "test")]
    with pytest.raises(Geor1Error, match="Rome"):
        list(cvcities_rows(tmp_path / "cvc", test_cities=["Rome"]))
    res = run_cli(
        "data",
        "convert",
        "cvcities",
        "--root",
        str(tmp_path / "cvc"),
        "--out",
        str(tmp_path / "out"),
        "--test-cities",
        "Tokyo",
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("data", "inspect", str(tmp_path / "out"))
    assert res.returncode == 0 and "train: 1 valid, 0 corrupt" in res.stdout and "test: 1 valid" in res.stdout
    assert (tmp_path / "out" / "inspect.png").is_file()
    res = run_cli("data", "convert", "vigor", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "no city folders with a panorama/" in res.stderr
