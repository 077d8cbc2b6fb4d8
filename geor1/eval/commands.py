"""`geor1 eval pairing|geolocate`: run a local model on held-out shards, write predictions and metrics."""

from __future__ import annotations

import argparse
import json


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: pairing accuracy, geolocation")
    esub = p.add_subparsers(dest="eval_command", metavar="TASK", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", required=True, help="local Hugging Face model folder")
    common.add_argument("--out", required=True, help="folder for predictions.csv, metrics.json, metrics.md")
    common.add_argument("--split", default="test")
    common.add_argument("--limit", type=int, default=None, help="evaluate the first N samples only")
    common.add_argument("--batch-size", type=int, default=16)
    common.add_argument("--max-new-tokens", type=int, default=256)
    common.add_argument("--max-pixels", type=int, default=None, help="image resolution cap (default: processor's)")
    pe = esub.add_parser("pairing", parents=[common], help="pairing accuracy (Wilson 95%% CI) on episode shards")
    pe.add_argument("--episodes", required=True)
    pe.set_defaults(handler=lambda ns: _run(ns, "pairing", ns.episodes))
    ge = esub.add_parser("geolocate", parents=[common], help="geolocation on pair or ground-only shards")
    ge.add_argument("--data", required=True)
    ge.set_defaults(handler=lambda ns: _run(ns, "geolocate", ns.data))


def load_samples(root: str, split: str, task: str, limit: int | None) -> list:
    from geor1 import Geor1Error
    from geor1.data.chat import ChatDecoder
    from geor1.data.reader import iter_raw_samples
    from geor1.data.schema import SampleError
    from geor1.data.shards import split_shards

    shards = split_shards(root, split)
    if not shards:
        raise Geor1Error(f"no shards for split '{split}' in {root}")
    decode, samples, skipped = ChatDecoder(task), [], 0
    for raw in iter_raw_samples(shards):
        try:
            samples.append(decode(raw))
        except SampleError:
            skipped += 1
        if limit is not None and len(samples) >= limit:
            break
    if skipped:
        print(f"warning: {skipped} corrupt samples skipped")
    return samples


def _run(ns: argparse.Namespace, task: str, root: str) -> None:
    from geor1.eval.runners import run_policy, score_geolocate, score_pairing, write_results
    from geor1.model.policy import Policy

    policy = Policy(ns.model, max_pixels=ns.max_pixels).eval()
    samples = load_samples(root, ns.split, task, ns.limit)
    rows = run_policy(policy, samples, ns.batch_size, ns.max_new_tokens)
    metrics, preds = (score_pairing if task == "pairing" else score_geolocate)(rows)
    metrics = {"model": ns.model, "data": root, "split": ns.split, **metrics}
    out = write_results(ns.out, metrics, preds, f"{task} evaluation")
    print(json.dumps(metrics, indent=2))
    print(f"predictions and metrics written to {out}")
