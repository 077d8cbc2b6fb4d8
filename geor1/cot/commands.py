"""`geor1 cot synthesize|import`: fact-checked chain-of-thought exemplars as SFT shards."""

from __future__ import annotations

import argparse
import json


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cot", help="synthesize or import fact-checked chain-of-thought exemplars")
    csub = p.add_subparsers(dest="cot_command", metavar="ACTION", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--shards", required=True, help="episode shards (pairing) or pair shards (geolocate)")
    common.add_argument("--out", required=True, help="folder for SFT shards, exemplars.jsonl, factcheck_summary.json")
    common.add_argument("--task", choices=["pairing", "geolocate"], required=True)
    common.add_argument("--tolerance-km", type=float, default=25.0, help="coordinates further off fail the check")
    common.add_argument("--splits", default="train,val,test")
    s = csub.add_parser("synthesize", parents=[common], help="template exemplars grounded in each sample's cues")
    s.add_argument("--seed", type=int, default=0, help="phrasing seed")
    s.set_defaults(handler=_run)
    i = csub.add_parser("import", parents=[common], help="exemplars from a JSONL of key, reasoning, answer")
    i.add_argument("--jsonl", required=True)
    i.set_defaults(handler=_run, seed=0)


def _run(ns: argparse.Namespace) -> None:
    from geor1.cot.synthesize import read_import, synthesize

    imported = read_import(ns.jsonl) if getattr(ns, "jsonl", None) else None
    report = synthesize(
        ns.shards,
        ns.out,
        ns.task,
        seed=ns.seed,
        tolerance_km=ns.tolerance_km,
        splits=tuple(s for s in ns.splits.split(",") if s),
        imported=imported,
    )
    summary = report.as_dict()
    print(
        f"{summary['kept']} of {summary['total']} exemplars kept; dropped by reason: {json.dumps(summary['dropped'])}"
    )
