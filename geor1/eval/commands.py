"""`geor1 eval pairing|geolocate|retrieval`: run a local model (or an index) on held-out shards, write metrics."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate: pairing accuracy, geolocation, cross-view retrieval")
    esub = p.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help="local Hugging Face model folder")
    common.add_argument("--out", required=True, help="folder for predictions.csv, metrics.json, metrics.md")
    common.add_argument("--split", default="test")
    common.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    common.add_argument("--batch-size", type=int, default=16)
    common.add_argument("--max-new-tokens", type=int, default=256)
    common.add_argument("--max-pixels", type=int, default=None, help="image resolution cap (default: processor's)")
    pe = esub.add_parser(
        "pairing",
        parents=[common],
        help="pairing accuracy (Wilson 95%% CI) on episode shards, per position of the true tile, letters answered",
    )
    pe.add_argument("--episodes", required=True)
    pe.add_argument(
        "--shuffle-candidates",
        action="store_true",
        help="also evaluate the same episodes with their candidates in a seeded random order per episode; reports "
        "both accuracies, order_invariant (the shuffled accuracy within the original's 95%% interval) and the "
        "paired difference with its 95%% interval",
    )
    pe.add_argument("--shuffle-seed", type=int, default=0, help="seed of the candidate orders (default 0)")
    pe.add_argument(
        "--samples",
        type=int,
        default=None,
        metavar="N",
        help="also draw N sampled completions per episode and report pass@k for k = 1, 2, 4, .. N (unbiased "
        "estimator of Chen et al. 2021); greedy decoding stays the source of pairing_acc",
    )
    pe.add_argument("--temperature", type=float, default=None, help="sampling temperature with --samples (default 1)")
    pe.add_argument("--sample-seed", type=int, default=0, help="torch seed of the sampling with --samples (default 0)")
    pe.set_defaults(handler=lambda ns: _run(ns, "pairing", ns.episodes))
    ge = esub.add_parser(
        "geolocate",
        parents=[common],
        help="geolocation: a model on shards, or a predictions CSV against a truth CSV (no model)",
    )
    ge.add_argument("--data", default=None, help="pair or ground-only shards, or a CSV of images (with --model)")
    ge.add_argument("--images", default=None, help="image folder of a --data CSV")
    ge.add_argument("--id-col", default=None, help="CSV image id/file column (default: IMG_ID or id)")
    ge.add_argument("--lat-col", default=None, help="CSV latitude column (default: LAT, lat or latitude)")
    ge.add_argument("--lon-col", default=None, help="CSV longitude column (default: LON, lon, lng or longitude)")
    ge.add_argument("--predictions", default=None, help="CSV id,lat,lon or id,text (model-free scoring)")
    ge.add_argument("--truth", default=None, help="CSV id,lat,lon[,city,country] (model-free scoring)")
    ge.set_defaults(handler=_geolocate)
    re_ = esub.add_parser("retrieval", help="cross-view Recall@1/5/10 of a split's ground views against an index")
    re_.add_argument("--index", required=True, help="index folder from `geor1 index build`")
    re_.add_argument("--shards", required=True, help="pair shards whose ground views are the queries")
    re_.add_argument("--split", default="test")
    re_.add_argument("--ckpt", default=None, help="encoder checkpoint (default: the one the index was built with)")
    re_.add_argument("--out", default=None, help="folder for metrics.json and metrics.md")
    re_.add_argument("--batch-size", type=int, default=128)
    re_.set_defaults(handler=_retrieval)


def _retrieval(ns: argparse.Namespace) -> None:
    import torch

    from geor1.retrieval.evaluate import evaluate_retrieval

    m = evaluate_retrieval(
        ns.index,
        ns.shards,
        ns.split,
        ns.ckpt,
        batch_size=ns.batch_size,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    table = "\n".join(
        [
            f"Cross-view retrieval: {m['queries']} '{m['split']}' ground views against {m['gallery']} "
            f"tiles ({m['queries_without_tile']} queries without a tile in the index)",
            "",
            "| metric | value | chance |",
            "|---|---|---|",
            *(f"| recall@{k} | {m[f'recall@{k}']:.3f} | {m[f'chance@{k}']:.3f} |" for k in (1, 5, 10)),
        ]
    )
    print(table)
    if ns.out:
        out = Path(ns.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
        (out / "metrics.md").write_text(table + "\n")


def load_samples(root: str, split: str, task: str, limit: int | None) -> list:
    from geor1.eval.samples import load_chat_samples

    samples, skipped = load_chat_samples(root, split, task, limit)
    if skipped:
        print(f"warning: {skipped} corrupt samples skipped")
    return samples


def _geolocate(ns: argparse.Namespace) -> None:
    from geor1 import Geor1Error

    if ns.predictions or ns.truth:
        if not (ns.predictions and ns.truth) or ns.model:
            raise Geor1Error("model-free scoring takes --predictions and --truth (and no --model)")
        from geor1.eval.runners import write_results
        from geor1.eval.scoring import read_predictions, read_truth, score

        for path in (ns.predictions, ns.truth):
            if not Path(path).is_file():
                raise Geor1Error(f"CSV not found: {path}")
        truth = read_truth(ns.truth)
        metrics, rows = score(read_predictions(ns.predictions), truth)
        metrics = {"predictions": ns.predictions, "truth": ns.truth, **metrics}
        out = write_results(ns.out, metrics, rows, "geolocation scoring")
        _plots(out, rows, truth)
        print(json.dumps(metrics, indent=2))
        return
    if not (ns.model and ns.data):
        raise Geor1Error("geolocation evaluation takes --model and --data, or --predictions and --truth")
    data = ns.data
    if Path(data).suffix.lower() == ".csv":
        data = str(_csv_to_shards(ns))
    elif ns.images:
        raise Geor1Error("--images goes with a --data CSV; shards carry their own images")
    _run(ns, "geolocate", data)


def _csv_to_shards(ns: argparse.Namespace) -> Path:
    """A benchmark CSV + image folder -> shards under <out>/shards (rows with a missing or broken image, or bad
    coordinates, are skipped and listed in skipped-csv.json there)."""
    import csv

    from geor1 import Geor1Error
    from geor1.data.convert import csv_rows, write_rows

    if not Path(ns.data).is_file():
        raise Geor1Error(f"CSV not found: {ns.data}")
    if not ns.images or not Path(ns.images).is_dir():
        raise Geor1Error(f"a --data CSV needs --images, the folder its image names are relative to (got {ns.images})")
    with open(ns.data, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])

    def pick(given: str | None, names: tuple[str, ...], what: str) -> str:
        if given:
            return given
        found = next((c for c in names if c in header), None)
        if found is None:
            raise Geor1Error(f"{ns.data}: no {what} column among {', '.join(header)} (name it with --{what}-col)")
        return found

    rows = csv_rows(
        ns.data,
        ns.images,
        id_col=pick(ns.id_col, ("IMG_ID", "id", "image"), "id"),
        lat_col=pick(ns.lat_col, ("LAT", "lat", "latitude"), "lat"),
        lon_col=pick(ns.lon_col, ("LON", "lon", "lng", "longitude"), "lon"),
        split=ns.split,
    )
    out = Path(ns.out) / "shards"
    report = write_rows(rows, out, "csv", "the benchmark's own licence")
    if report.skipped:
        print(f"warning: {len(report.skipped)} CSV rows skipped (listed in {out}/skipped-csv.json)")
    return out


def _plots(out: Path, rows: list[dict], truth: dict[str, dict]) -> None:
    """Error CDF and world map as PNGs, also logged to TensorBoard under <out>/tb."""
    import numpy as np

    from geor1.eval.plots import error_cdf, world_map

    d = np.array([r["km"] for r in rows if r["parsed"]], dtype=float)
    pred = np.array([[r["lat"], r["lon"]] if r["parsed"] else [np.nan, np.nan] for r in rows], dtype=float)
    true = np.array([[truth[r["id"]]["lat"], truth[r["id"]]["lon"]] for r in rows], dtype=float)
    cdf = error_cdf({"predictions": d}, {"predictions": len(rows)}, out / "error_cdf.png")
    wm = world_map(pred, true, out / "world_map.png", f"{int(np.sum(~np.isnan(pred[:, 0])))} of {len(rows)} parsed")
    try:
        from PIL import Image
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out / "tb")) as writer:
            for tag, png in (("eval/error_cdf", cdf), ("eval/world_map", wm)):
                writer.add_image(tag, np.asarray(Image.open(png).convert("RGB")), 0, dataformats="HWC")
    except ImportError:
        pass


def _run(ns: argparse.Namespace, task: str, root: str) -> None:
    from geor1 import Geor1Error
    from geor1.eval.runners import run_policy, score_geolocate, score_pairing, write_results
    from geor1.model.policy import Policy

    if not ns.model:
        raise Geor1Error("--model is required")

    shuffle, num_samples = getattr(ns, "shuffle_candidates", False), getattr(ns, "samples", None)
    temperature = getattr(ns, "temperature", None)
    if num_samples is not None and num_samples < 1:
        raise Geor1Error(f"--samples must be at least 1, got {num_samples}")
    if temperature is not None and num_samples is None:
        raise Geor1Error("--temperature applies to sampled completions: give --samples N with it")
    if temperature is not None and not temperature > 0:
        raise Geor1Error(f"--temperature must be > 0, got {temperature}")

    policy = Policy(ns.model, max_pixels=ns.max_pixels).eval()
    samples = load_samples(root, ns.split, task, ns.limit)
    rows = run_policy(policy, samples, ns.batch_size, ns.max_new_tokens)
    metrics, preds = (score_pairing if task == "pairing" else score_geolocate)(rows)
    metrics = {"model": ns.model, "data": root, "split": ns.split, **metrics}
    shuffled_preds = None
    if task == "pairing" and shuffle:
        from geor1.eval.runners import compare_orders, evaluate_shuffled

        shuffled_metrics, shuffled_preds = evaluate_shuffled(
            policy, samples, ns.shuffle_seed, ns.batch_size, ns.max_new_tokens
        )
        metrics.update(compare_orders(metrics, preds, shuffled_metrics, shuffled_preds, ns.shuffle_seed))
    if task == "pairing" and num_samples is not None:
        from geor1.eval.runners import sample_policy, score_pass_at_k
        from geor1.tasks import get_task

        t = 1.0 if temperature is None else temperature
        sampled = sample_policy(policy, samples, num_samples, t, ns.batch_size, ns.max_new_tokens, ns.sample_seed)
        metrics.update(
            temperature=t, sample_seed=ns.sample_seed, **score_pass_at_k(get_task("pairing"), sampled, num_samples)
        )
    out = write_results(ns.out, metrics, preds, f"{task} evaluation")
    if shuffled_preds is not None:
        from geor1.eval.runners import write_predictions

        write_predictions(out / "predictions_shuffled.csv", shuffled_preds)
    if task == "geolocate":
        _plots(out, preds, {s.key: s.meta for s in samples})
    print(json.dumps(metrics, indent=2))
    print(f"predictions and metrics written to {out}")
