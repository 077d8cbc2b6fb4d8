"""`geor1 model ...`: tiny offline test models."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="tiny offline test models")
    msub = p.add_subparsers(dest="model_command", metavar="ACTION", required=True)
    tiny = msub.add_parser("tiny", help="write a tiny random-init Qwen2.5-VL + processor folder (offline)")
    tiny.add_argument("--out", required=True, help="folder to write (config.json, model.safetensors, processor)")
    tiny.add_argument("--seed", type=int, default=0, help="weights seed")
    tiny.add_argument("--hidden-size", type=int, default=128)
    tiny.add_argument("--num-layers", type=int, default=2)
    tiny.set_defaults(handler=_tiny)


def _tiny(ns: argparse.Namespace) -> None:
    from geor1.model.tiny import save_tiny_checkpoint

    out = save_tiny_checkpoint(ns.out, seed=ns.seed, hidden_size=ns.hidden_size, num_layers=ns.num_layers)
    print(f"tiny Qwen2.5-VL written to {out}")
