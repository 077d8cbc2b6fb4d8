"""GeodesicError and PairingAccuracy against hand-computed values, under DDP, and model-free CSV scoring."""

from __future__ import annotations

import csv
import json
import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from geor1.metrics.geodesic import GeodesicError, PairingAccuracy

R = 6371.0088


def _great_circle(lat1, lon1, lat2, lon2) -> float:
    """An independent formula (atan2 form of the spherical law), for checking the haversine."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    y = math.hypot(
        math.cos(p2) * math.sin(dl), math.cos(p1) * math.sin(p2) - math.sin(p1) * math.cos(p2) * math.cos(dl)
    )
    x = math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    return R * math.atan2(y, x)


CASES = [  # (pred, truth, km)
    ((48.85, 2.35), (48.85, 2.35), 0.0),  # identical
    ((0.0, 0.0), (0.0, 180.0), math.pi * R),  # antipodes
    ((90.0, 0.0), (-90.0, 0.0), math.pi * R),  # pole to pole
    ((0.0, 179.9), (0.0, -179.9), math.radians(0.2) * R),  # across the dateline: 22.24 km
    ((10.0, 10.0), (11.0, 10.0), math.radians(1.0) * R),  # 111.2 km
]


def _update(metric, cases, unparsed: int = 0):
    f64 = torch.float64  # coordinates in float32 lose up to ~1 m; the metric computes in float64
    pl = torch.tensor([c[0][0] for c in cases] + [999.0] * unparsed, dtype=f64)
    po = torch.tensor([c[0][1] for c in cases] + [999.0] * unparsed, dtype=f64)
    tl = torch.tensor([c[1][0] for c in cases] + [0.0] * unparsed, dtype=f64)
    to = torch.tensor([c[1][1] for c in cases] + [0.0] * unparsed, dtype=f64)
    parsed = torch.tensor([True] * len(cases) + [False] * unparsed)
    metric.update(pl, po, tl, to, parsed)


def test_geodesic_error_by_hand():
    m = GeodesicError()
    _update(m, CASES, unparsed=3)
    out = {k: float(v) for k, v in m.compute().items()}
    km = sorted(c[2] for c in CASES)
    n = len(CASES) + 3  # unparseable answers stay in the denominator
    assert out["n"] == n and out["unparseable_share"] == pytest.approx(3 / n)
    assert out["acc@1km"] == pytest.approx(1 / n)
    assert out["acc@25km"] == pytest.approx(2 / n)  # identical + dateline (22.2 km)
    assert out["acc@200km"] == pytest.approx(3 / n)
    assert out["acc@2500km"] == pytest.approx(3 / n)
    assert out["mean_km_parsed"] == pytest.approx(sum(km) / len(km), rel=1e-9)
    assert out["median_km_parsed"] == pytest.approx(km[2], rel=1e-9)
    assert out["geoscore_mean_parsed"] == pytest.approx(sum(5000 * math.exp(-d / 1492.7) for d in km) / len(km))


def test_threshold_is_inclusive():
    m = GeodesicError(thresholds_km=(math.radians(1.0) * R,))
    _update(m, [CASES[4]])
    assert float(m.compute()[f"acc@{math.radians(1.0) * R:g}km"]) == 1.0  # d <= threshold counts


def test_pairing_accuracy_wilson():
    m = PairingAccuracy()
    m.update(torch.tensor([1, 1, 1, 1, 1, 1, 1, 1, 0, 0]))
    out = m.compute()
    assert float(out["pairing_acc"]) == pytest.approx(0.8)
    assert float(out["ci95_low"]) == pytest.approx(0.4902, abs=1e-3) and float(out["ci95_high"]) == pytest.approx(
        0.9433, abs=1e-3
    )


def _ddp_worker(rank: int, port: int, path: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    m = GeodesicError()
    mine = CASES[rank::2]
    _update(m, mine, unparsed=rank + 1)
    out = {k: float(v) for k, v in m.compute().items()}  # syncs across both ranks
    if rank == 0:
        with open(path, "w") as f:
            json.dump(out, f)
    torch.distributed.destroy_process_group()


def test_ddp_reduction_equals_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "ddp.json"
    mp.spawn(_ddp_worker, args=(port, str(path)), nprocs=2, join=True)
    ddp = json.loads(path.read_text())
    single = GeodesicError()
    _update(single, CASES[0::2], unparsed=1)
    _update(single, CASES[1::2], unparsed=2)
    expected = {k: float(v) for k, v in single.compute().items()}
    assert ddp.keys() == expected.keys()
    for k in expected:
        assert ddp[k] == pytest.approx(expected[k], rel=1e-12), k  # the median over all ranks' values


def test_model_free_scoring_matches_independent_haversine(tmp_path):
    from geor1.cli import main

    truth = [
        ("a", 48.8566, 2.3522, "Paris", "FR"),
        ("b", 40.7128, -74.0060, "New York City", "US"),
        ("c", -33.8688, 151.2093, "Sydney", "AU"),
        ("d", 35.6762, 139.6503, "Tokyo", "JP"),
    ]
    preds = {
        "a": "<think>x</think><answer>48.80, 2.30 (Paris, FR)</answer>",
        "b": "40.0 N, 75.0 W",
        "c": "<answer>no idea</answer>",
    }  # "d" has no prediction at all
    with open(tmp_path / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "lat", "lon", "city", "country"])
        w.writerows(truth)
    with open(tmp_path / "pred.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text"])
        w.writerows(preds.items())
    main(
        [
            "eval",
            "geolocate",
            "--predictions",
            str(tmp_path / "pred.csv"),
            "--truth",
            str(tmp_path / "truth.csv"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    da = _great_circle(48.80, 2.30, 48.8566, 2.3522)
    db = _great_circle(40.0, -75.0, 40.7128, -74.0060)
    assert metrics["n"] == 4 and metrics["unparseable_share"] == 0.5
    assert metrics["mean_km_parsed"] == pytest.approx((da + db) / 2, rel=1e-9)
    assert metrics["acc@25km"] == pytest.approx(1 / 4) and metrics["acc@200km"] == pytest.approx(2 / 4)
    assert metrics["country_acc"] == pytest.approx(2 / 4)  # reverse geocoding: Paris area FR, (40N, 75W) US
    assert (tmp_path / "out" / "error_cdf.png").is_file() and (tmp_path / "out" / "world_map.png").is_file()
    assert list((tmp_path / "out" / "tb").glob("events.out.tfevents.*"))


def test_eval_geolocate_runs_a_model_on_a_csv_of_images(tmp_path):
    import numpy as np
    from PIL import Image

    from geor1.cli import main
    from geor1.model.tiny import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = [("a", 48.8566, 2.3522), ("b", -33.8688, 151.2093), ("c", 40.7128, -74.0060), ("gone", 1.0, 1.0)]
    for name, _, _ in rows[:3]:
        Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(images / f"{name}.jpg")
    with open(tmp_path / "bench.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "lat", "lon"])
        w.writerows(rows)
    out = tmp_path / "out"
    main(
        [
            "eval",
            "geolocate",
            "--model",
            str(model),
            "--data",
            str(tmp_path / "bench.csv"),
            "--images",
            str(images),
            "--out",
            str(out),
            "--max-new-tokens",
            "4",
            "--max-pixels",
            "12544",
        ]
    )
    with open(out / "predictions.csv") as f:
        preds = list(csv.DictReader(f))
    assert sorted(p["key"] for p in preds) == ["a", "b", "c"]  # the row without an image is skipped ...
    assert sorted(p["id"] for p in preds) == ["a", "b", "c"]  # the CSV's own ids
    skipped = json.loads((out / "shards" / "skipped-csv.json").read_text())
    assert [s["key"] for s in skipped] == ["gone"]  # ... and listed, not lost
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 3 and 0.0 <= metrics["unparseable_share"] <= 1.0
