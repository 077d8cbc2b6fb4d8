"""The `geor1` command (also installed as `lightning`, and run by `python -m geor1`).

    geor1 fit|validate|test|predict --config configs/<stage>/<recipe>.yaml   LightningCLI: module and data by class_path
    geor1 model ...                                                          tiny test models, export
    geor1 demo ...                                                           the end-to-end demo

Training subcommands go to LightningCLI untouched (`geor1.train`); the others are argparse subcommands that each
concern folder registers (`add_commands(subparsers)`), importing heavy libraries only when they run, so
`geor1 --help` is quick. User errors (`Geor1Error`) print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from geor1 import Geor1Error, __version__, set_offline_mode
from geor1.train import run_lightning, user_error

TRAINER_COMMANDS = {
    "fit": "train: geor1 fit --config configs/<stage>/<recipe>.yaml [--trainer.max_steps N ...]",
    "validate": "run the validation loop of a config (and --ckpt_path)",
    "test": "run the test loop of a config (and --ckpt_path)",
    "predict": "run the predict loop of a config (and --ckpt_path)",
}


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    from geor1.cot import commands as cot_commands
    from geor1.data import commands as data_commands
    from geor1.demo import commands as demo_commands
    from geor1.eval import commands as eval_commands
    from geor1.model import commands as model_commands
    from geor1.retrieval import commands as retrieval_commands

    return [
        data_commands.add_commands,
        retrieval_commands.add_commands,
        cot_commands.add_commands,
        eval_commands.add_commands,
        model_commands.add_commands,
        demo_commands.add_commands,
    ]


def build_parser(prog: str = "geor1") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="geor1: Geo-R1 post-training of vision-language models (scaffolding SFT, GRPO elevating, "
        "geodesic evaluation). Training runs through LightningCLI; the rest are tools.",
        epilog=f"`{prog} fit --help` lists every option of a training run. `lightning` is an alias of `geor1`.",
    )
    parser.add_argument("--version", action="version", version=f"geor1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in TRAINER_COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for register in _registrars():
        register(sub)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever `sys.stderr` is when a record is emitted (not the stream of the
    moment it was made: a caller may replace stderr between runs, as test runners do)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _configure_logging() -> None:
    """geor1's own loggers print to stderr when nothing else handles them (a command-line run: the root logger has
    no handler); records still propagate, so a program or test runner that configured logging receives them once,
    through its own handlers. Lightning keeps its own handlers."""
    logger = logging.getLogger("geor1")
    logger.setLevel(os.environ.get("GEOR1_LOG_LEVEL", "INFO"))
    if not logger.handlers and not logging.getLogger().handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "geor1"
    prog = prog if prog in ("geor1", "lightning") else "geor1"
    set_offline_mode()  # before any command imports transformers
    _configure_logging()
    try:
        if argv and argv[0] in TRAINER_COMMANDS:
            try:
                run_lightning(argv, prog)
            except Exception as e:  # jsonargparse wraps errors raised while instantiating classes
                cause = user_error(e)
                if cause is None:
                    raise
                raise cause from None
            return
        parser = build_parser(prog)
        ns = parser.parse_args(argv)
        if ns.command is None or not hasattr(ns, "handler"):
            parser.print_help()
            sys.exit(0 if ns.command is None else 2)
        ns.handler(ns)
    except Geor1Error as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
