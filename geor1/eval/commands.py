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
    common.add_argument("--devices", default="auto", help="devices of this machine (default: all; DDP over several)")
    common.add_argument(
        "--restart", action="store_true", help="start over instead of skipping the samples --out already holds"
    )
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
    ge.add_argument("--id-col", default=None, help="id column of a --data or --truth CSV (default: id, IMG_ID, ...)")
    ge.add_argument("--lat-col", default=None, help="latitude column of a --data or --truth CSV (default: lat, LAT..)")
    ge.add_argument("--lon-col", default=None, help="longitude column of a --data or --truth CSV (default: lon, LON..)")
    ge.add_argument(
        "--lat-lon-check",
        choices=["auto", "swap", "off"],
        default="auto",
        help="a --data or --truth CSV whose lat/lon columns look swapped (points at sea) is an error (auto), read "
        "swapped (swap) or read as the header says (off)",
    )
    ge.add_argument("--predictions", default=None, help="CSV id,lat,lon or id,text (model-free scoring)")
    ge.add_argument("--truth", default=None, help="CSV id,lat,lon[,city,country] (model-free scoring)")
    ge.set_defaults(handler=_geolocate)
    g = sub.add_parser(
        "geolocate",
        help="where were these photos taken? a local model on photos without coordinates -> predictions.csv + map",
        description="Geolocate photos that have no coordinates with a local model: writes <out>/predictions.csv "
        "(key, path, lat, lon, city, country, how the answer was read, the answer and the reasoning) and "
        "<out>/world_map.png. Runs the loop of `geor1 predict` (geor1.eval.module.EvalModule over "
        "geor1.data.photos.PhotoDataModule); started again over the same --out it skips the photos already done.",
    )
    g.add_argument("photos", nargs="+", help="photo files, folders (searched recursively), quoted globs, CSVs of paths")
    g.add_argument("--model", required=True, help="local Hugging Face model folder")
    g.add_argument("--out", required=True, help="folder for predictions.csv and world_map.png")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--max-pixels", type=int, default=None, help="image resolution cap (default: processor's)")
    g.add_argument("--question", default=None, help="the prompt, with one <image> marker (default: the task's)")
    g.add_argument("--path-col", default=None, help="the path column of a CSV of photos")
    g.add_argument("--devices", default="auto", help="devices of this machine (default: all; DDP over several)")
    g.add_argument("--restart", action="store_true", help="start over instead of skipping photos already done")
    g.set_defaults(handler=_photos)
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
        from geor1.eval.module import GEO_COLUMNS
        from geor1.eval.report import geolocation_plots, write_metrics
        from geor1.eval.scoring import read_predictions, read_truth, score_texts
        from geor1.eval.writer import write_csv

        for path in (ns.predictions, ns.truth):
            if not Path(path).is_file():
                raise Geor1Error(f"CSV not found: {path}")
        truth, skipped = read_truth(ns.truth, ns.id_col, ns.lat_col, ns.lon_col, ns.lat_lon_check)
        metrics, rows = score_texts(read_predictions(ns.predictions), truth)
        metrics = {"predictions": ns.predictions, "truth": ns.truth, "task": "geolocate", **metrics}
        out = Path(ns.out)
        out.mkdir(parents=True, exist_ok=True)
        if skipped:
            metrics["truth_rows_skipped"] = len(skipped)
            (out / "skipped-truth.json").write_text(json.dumps(skipped, indent=1) + "\n")
            print(f"warning: {len(skipped)} truth rows skipped (listed in {out / 'skipped-truth.json'})")
        write_csv(out / "predictions.csv", rows, GEO_COLUMNS)
        write_metrics(out, metrics)
        geolocation_plots(out, rows)
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
    from geor1.eval.scoring import ID_COLUMNS, LAT_COLUMNS, LON_COLUMNS, pick_column

    if not Path(ns.data).is_file():
        raise Geor1Error(f"CSV not found: {ns.data}")
    if not ns.images or not Path(ns.images).is_dir():
        raise Geor1Error(f"a --data CSV needs --images, the folder its image names are relative to (got {ns.images})")
    with open(ns.data, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])

    rows = csv_rows(
        ns.data,
        ns.images,
        id_col=pick_column(ns.data, header, ns.id_col, ID_COLUMNS, "id"),
        lat_col=pick_column(ns.data, header, ns.lat_col, LAT_COLUMNS, "lat"),
        lon_col=pick_column(ns.data, header, ns.lon_col, LON_COLUMNS, "lon"),
        split=ns.split,
        swap_lat_lon={"auto": None, "swap": True, "off": False}[ns.lat_lon_check],
    )
    out = Path(ns.out) / "shards"
    report = write_rows(rows, out, "csv", "the benchmark's own licence")
    if report.skipped:
        print(f"warning: {len(report.skipped)} CSV rows skipped (listed in {out}/skipped-csv.json)")
    return out


def _devices(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def _photos(ns: argparse.Namespace) -> None:
    from geor1.data.photos import PhotoDataModule
    from geor1.eval.loop import run_loop
    from geor1.eval.module import EvalModule
    from geor1.model.policy import Policy

    datamodule = PhotoDataModule(ns.photos, question=ns.question, path_col=ns.path_col, batch_size=ns.batch_size)
    policy = Policy(ns.model, max_pixels=ns.max_pixels)
    module = EvalModule(
        policy, out_dir=ns.out, task="geolocate", max_new_tokens=ns.max_new_tokens, resume=not ns.restart
    )
    run_loop("predict", module, datamodule, devices=_devices(ns.devices))
    print(f"predictions of {len(datamodule.items)} photos written to {Path(ns.out) / 'predictions.csv'}")


def _run(ns: argparse.Namespace, task: str, root: str) -> None:
    """The test loop of `EvalModule` over `root`'s split (one path with `geor1 test --config`), then for pairing the
    optional audits (shuffled candidates, pass@k) on the same episodes."""
    from geor1 import Geor1Error
    from geor1.data.chat import ChatShardDataModule
    from geor1.eval.loop import run_loop
    from geor1.eval.module import EvalModule
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

    policy = Policy(ns.model, max_pixels=ns.max_pixels)
    module = EvalModule(policy, out_dir=ns.out, task=task, max_new_tokens=ns.max_new_tokens, resume=not ns.restart)
    datamodule = ChatShardDataModule(roots=root, task=task, batch_size=ns.batch_size, val_split="", test_split=ns.split)
    datamodule.limit_evaluation(ns.limit)
    run_loop("test", module, datamodule, devices=_devices(ns.devices))
    out = Path(ns.out)
    metrics = {"model": ns.model, "data": root, "split": ns.split, **json.loads((out / "metrics.json").read_text())}
    if task == "pairing" and (shuffle or num_samples is not None):
        metrics.update(_pairing_audits(ns, policy.eval(), root, out))
    from geor1.eval.report import write_metrics

    write_metrics(out, metrics)
    print(json.dumps(metrics, indent=2))
    print(f"predictions and metrics written to {out}")


def _pairing_audits(ns: argparse.Namespace, policy, root: str, out: Path) -> dict:
    """The shuffled-candidates re-run and pass@k of sampled completions, on the episodes the test loop read."""
    import csv

    from geor1.eval.runners import compare_orders, evaluate_shuffled, sample_policy, score_pass_at_k, write_predictions
    from geor1.tasks import get_task

    samples = load_samples(root, ns.split, "pairing", ns.limit)
    samples.sort(key=lambda s: s.key)  # the order of predictions.csv
    with open(out / "predictions.csv", newline="", encoding="utf-8") as f:
        preds = [{"id": r["key"], "correct": int(r["correct"])} for r in csv.DictReader(f)]
    extra: dict = {}
    if ns.shuffle_candidates:
        base = json.loads((out / "metrics.json").read_text())
        shuffled_metrics, shuffled_preds = evaluate_shuffled(
            policy, samples, ns.shuffle_seed, ns.batch_size, ns.max_new_tokens
        )
        extra.update(compare_orders(base, preds, shuffled_metrics, shuffled_preds, ns.shuffle_seed))
        write_predictions(out / "predictions_shuffled.csv", shuffled_preds)
    if ns.samples is not None:
        t = 1.0 if ns.temperature is None else ns.temperature
        sampled = sample_policy(policy, samples, ns.samples, t, ns.batch_size, ns.max_new_tokens, ns.sample_seed)
        extra.update(
            temperature=t, sample_seed=ns.sample_seed, **score_pass_at_k(get_task("pairing"), sampled, ns.samples)
        )
    return extra
