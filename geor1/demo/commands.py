"""`geor1 demo`: run (or resume) the whole pipeline and print its report."""

from __future__ import annotations

import argparse

from geor1.demo.config import STAGES


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on GeoWorld with a tiny model (CPU, offline)")
    p.add_argument("--out", default="runs/demo", help="output folder (stages, report.md, TensorBoard logs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="miniature sizes (about a minute), for smoke tests")
    p.add_argument("--redo", action="append", default=[], choices=STAGES, help="redo this stage (repeatable)")
    p.add_argument("--fresh", action="store_true", help="redo every stage")
    p.set_defaults(handler=_demo)


def _demo(ns: argparse.Namespace) -> None:
    from geor1.demo import DemoConfig, run_demo

    cfg = DemoConfig.quick(seed=ns.seed) if ns.quick else DemoConfig(seed=ns.seed)
    report = run_demo(cfg, ns.out, redo=STAGES if ns.fresh else ns.redo)
    print(report.read_text())
