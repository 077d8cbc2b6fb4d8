"""Training runs through LightningCLI, for the `geor1 fit|validate|test|predict` command and for library callers
(the demo): the LightningModule and the LightningDataModule are chosen by `class_path` in the config.

`run_lightning` is LightningCLI as the command runs it; `fit` runs one config file (the exact config of the run,
as `geor1 fit --config FILE` would) and turns an error of the user's making, which jsonargparse wraps while it
instantiates the classes, back into the `Geor1Error` that names it.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from geor1 import Geor1Error


def run_lightning(args: Sequence[str], prog: str = "geor1") -> None:
    """LightningCLI with the LightningModule and DataModule chosen by `class_path` in the YAML."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import SaveConfigCallback

    from geor1.objectives.runs import Geor1CLI

    given = list(args)
    args = nested_nulls(given)  # jsonargparse loses a null two classes deep: give it as the mapping it means
    evaluation = next(iter(args), None) in ("test", "predict")
    exact = {"allow_abbrev": False}  # `--trainer.max_step` is an error, not a prefix of --trainer.max_steps
    with warnings.catch_warnings():  # the rewritten command line is still the user's own
        if args != given:
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        Geor1CLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            # an evaluation keeps its outputs in the module's out_dir, not a config.yaml in the current folder
            save_config_callback=None if evaluation else SaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "prog": prog,
                **exact,
                **{cmd: dict(exact) for cmd in ("fit", "validate", "test", "predict")},
            },
            # None lets LightningCLI read sys.argv itself (it warns when given both)
            args=None if args == sys.argv[1:] else args,
        )


_NULLS = ("null", "Null", "NULL", "~")


def nested_nulls(args: list[str]) -> list[str]:
    """`args` with every null given to an option two or more levels under a top-level key (e.g.
    `--model.policy.init_args.max_pixels null`) rewritten as the mapping it means
    (`--model.policy '{"init_args": {"max_pixels": null}}'`). jsonargparse (4.53) re-parses such a value as the
    string "None" on its way down the nested classes, which `int | None` refuses; a mapping it merges into the
    config like any override. Every other argument is kept as it is."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        key, value, used = arg, None, 1
        if arg.startswith("--") and "=" in arg:
            key, value = arg.split("=", 1)
        elif arg.startswith("--") and i + 1 < len(args):
            value, used = args[i + 1], 2
        parts = key[2:].split(".") if key.startswith("--") else []
        if parts[1:2] == ["init_args"]:
            parts = [parts[0], *parts[2:]]
        if value in _NULLS and len(parts) >= 3:
            nested: object = None
            for part in reversed(parts[2:]):
                nested = {part: nested}
            out += [f"--{parts[0]}.{parts[1]}", json.dumps(nested)]
            i += used
            continue
        out.append(arg)
        i += 1
    return out


def user_error_in_chain(exc: BaseException) -> Geor1Error | None:
    """The Geor1Error behind `exc` (itself, its cause or its context), if any."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, Geor1Error):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return None


def user_error(exc: BaseException) -> Geor1Error | None:
    """The user error behind a failed LightningCLI run: a Geor1Error in the chain, or a checkpoint whose weights do
    not fit the config's model; None for anything else (a bug, to be raised as it is)."""
    cause = user_error_in_chain(exc)
    if cause is None and isinstance(exc, RuntimeError) and "Error(s) in loading state_dict" in str(exc):
        lines = str(exc).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(exc)
        cause = Geor1Error(f"the checkpoint does not fit this config (different model or sizes): {first}")
    return cause


def fit(config: str | Path) -> None:
    """`geor1 fit --config CONFIG`, in-process; user errors come out as the Geor1Error that names them."""
    if not Path(config).is_file():
        raise Geor1Error(f"config {config} not found")
    try:
        with warnings.catch_warnings():  # the caller's own command line (e.g. `geor1 demo ...`) is not this run's
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            run_lightning(["fit", "--config", str(config)])
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        raise cause from None
