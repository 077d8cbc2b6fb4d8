"""One folder per run: a recipe names `trainer.default_root_dir` once and everything the run writes is derived
from it, so that `--trainer.default_root_dir X` moves all of it:

    <root>/checkpoints/     ModelCheckpoint callbacks without a `dirpath` (and CheckpointOnSigterm)
    <root>/tb/version_N/    TensorBoard (`RunLogger` without a `save_dir`), with the run's config.yaml
    <root>/model/           the trained policy's Hugging Face export (`export_dir` unset)

geor1's LightningCLI (`geor1.train`) binds these after it builds the trainer (`bind_run_folder`), and refuses to
start a run over an earlier run's outputs (`check_run_folder`) unless `--overwrite`. Resuming reads the
checkpoint's own facts first (`read_checkpoint`): its step and the module class that saved it.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from geor1 import Geor1Error
from geor1.objectives.base import PolicyModule

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
EXPORT = "model"
# what a TensorBoard version folder holds before the run logged a single scalar
_LAUNCH_FILES = ("config.yaml", "hparams.yaml")
# `--ckpt_path` values Lightning resolves itself (no file to read beforehand)
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


class RunLogger(TensorBoardLogger):
    """TensorBoard logs in `<save_dir>/<name>/version_N`, `save_dir` defaulting to the run folder
    (`trainer.default_root_dir`). A launch that fails before it logs a scalar leaves no version folder behind.

    Args:
        save_dir: where the `name` folder goes; unset: the run folder.
        name: the folder of the run's versions (`tb`).
        version: a fixed version (int: `version_<int>`, str: the folder name); unset: the next free one.
        kwargs: TensorBoardLogger's other arguments (`default_hp_metric`, `prefix`, `sub_dir`, `flush_secs`, ...).
    """

    def __init__(
        self, save_dir: str | None = None, name: str = "tb", version: int | str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version, **kwargs)
        self.derives_save_dir = save_dir is None
        self._wrote_scalars = False

    def bind_run_folder(self, root: str | Path) -> None:
        """Put the logs under `root` when no `save_dir` was given (before anything is written)."""
        if self.derives_save_dir:
            self._root_dir = os.fspath(root)  # TensorBoardLogger's save_dir (its root_dir is save_dir/name)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if any(k != "hp_metric" for k in metrics):
            self._wrote_scalars = True
        super().log_metrics(metrics, step)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "failed" and not self._wrote_scalars:
            remove_unused_version(Path(self.log_dir))


def remove_unused_version(folder: Path) -> bool:
    """Delete a TensorBoard version folder that holds nothing but what a launch writes (config.yaml, hparams.yaml,
    event files) -> whether it was removed. Anything else in it (a checkpoint, a text file) keeps it."""
    if not folder.is_dir():
        return False
    files = list(folder.iterdir())
    if not all(f.is_file() and (f.name in _LAUNCH_FILES or f.name.startswith("events.out.tfevents.")) for f in files):
        return False
    shutil.rmtree(folder)
    if not any(folder.parent.iterdir()):
        folder.parent.rmdir()  # the logger's `name` folder (tb/), if this was its only version
    log.info("the launch failed before it logged anything: removed its empty log folder %s", folder)
    return True


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, without its `Epoch 0/-2` under a step limit (max_epochs -1: no epoch limit):
    there it reads `Epoch 0` (the bar's total is the steps left)."""

    def _get_train_description(self, current_epoch: int) -> str:  # RichProgressBar's (private) description hook
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0:
            return super()._get_train_description(current_epoch)
        description = f"Epoch {current_epoch}"
        return f"{description:{len(self.validation_description)}}"  # padded as Lightning does (no flicker)


def run_root(default_root_dir: str | None) -> Path:
    """The run folder of a `trainer.default_root_dir` setting (unset: the working directory, as Lightning)."""
    return Path(default_root_dir) if default_root_dir else Path.cwd()


def bind_run_folder(trainer: L.Trainer, module: L.LightningModule | None) -> None:
    """Derive what the config left unset from the run folder: RunLogger's save_dir, every ModelCheckpoint's dirpath
    (`<root>/checkpoints`) and, given a fit's policy `module`, its `export_dir` (`<root>/model`)."""
    root = Path(trainer.default_root_dir)
    for lg in trainer.loggers:
        if isinstance(lg, RunLogger):
            lg.bind_run_folder(root)
    for cb in trainer.callbacks:  # type: ignore[attr-defined]  # Trainer.callbacks is a list (typed loosely)
        if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
            cb.dirpath = os.fspath(root / CHECKPOINTS)
    if isinstance(module, PolicyModule) and not module.export_dir:
        module.export_dir = os.fspath(root / EXPORT)


def earlier_outputs(folders: list[Path]) -> list[Path]:
    """The folders among `folders` that exist and are not empty (an earlier run's checkpoints or export)."""
    return [f for f in folders if f.is_dir() and any(f.iterdir())]


def check_run_folder(
    root: Path, export_dir: Path | None, checkpoint_dirs: list[Path], ckpt_path: str | None, overwrite: bool
) -> None:
    """Refuse to start a run that would write over an earlier run's checkpoints or export.

    Allowed: a run folder without them; a resume of a checkpoint inside the run folder (the same run, going on: its
    export is replaced at the end); anything with `overwrite`."""
    if overwrite:
        return
    if ckpt_path and ckpt_path not in SPECIAL_CKPT_PATHS and _inside(Path(ckpt_path), root):
        return
    if ckpt_path in SPECIAL_CKPT_PATHS:
        return  # Lightning finds the checkpoint in this run's own checkpoint folder
    found = earlier_outputs([*checkpoint_dirs, *([export_dir] if export_dir else [])])
    if found:
        last = root / CHECKPOINTS / "last.ckpt"
        resume = f", resume that run with --ckpt_path {last}" if last.exists() else ""
        raise Geor1Error(
            f"the run folder {root} holds an earlier run ({', '.join(str(f) for f in found)}): give this run its own "
            f"folder with --trainer.default_root_dir{resume}, or pass --overwrite to write over it"
        )


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


@dataclass
class CheckpointInfo:
    """What a resume needs to know about a checkpoint before it builds anything."""

    path: Path
    global_step: int
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def class_path(self) -> str | None:
        """The module class that saved it (LightningCLI records it as `_class_path`), if known."""
        value = self.hparams.get("_class_path")
        return value if isinstance(value, str) else None


def read_checkpoint(ckpt_path: str | Path) -> CheckpointInfo:
    """The step and hyper-parameters of a Lightning checkpoint file, or of a distributed checkpoint folder (its
    `meta.pt`), without reading the weights into memory (memory-mapped). A missing path or a file that is not a
    checkpoint is a Geor1Error naming it."""
    path = Path(ckpt_path)
    if not path.exists():
        raise Geor1Error(
            f"--ckpt_path {path}: no such checkpoint (a run's checkpoints are in <trainer.default_root_dir>/"
            f"{CHECKPOINTS}/, e.g. last.ckpt)"
        )
    source = path / "meta.pt" if path.is_dir() else path
    if not source.is_file():
        raise Geor1Error(f"--ckpt_path {path}: a folder without meta.pt is not a (distributed) Lightning checkpoint")
    try:
        try:
            ckpt = torch.load(source, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not in the zip format mmap needs
            ckpt = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:
        raise Geor1Error(f"--ckpt_path {path}: not a Lightning checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or "global_step" not in ckpt:
        raise Geor1Error(f"--ckpt_path {path}: not a Lightning checkpoint (no global_step)")
    hparams = ckpt.get("hyper_parameters") or {}
    return CheckpointInfo(path, int(ckpt["global_step"]), dict(hparams))


def resolve_class(class_path: str) -> type | None:
    """The class a `class_path` names (None when it does not import)."""
    module, _, name = class_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def check_module_class(info: CheckpointInfo, class_path: str) -> None:
    """A checkpoint resumes only into the module class that saved it: otherwise a one-line Geor1Error naming both
    (also for checkpoints saved outside LightningCLI, recognised by hyper-parameters the class does not take)."""
    wanted = resolve_class(class_path)
    hint = (
        "resume with the config of the run that saved it (<its run folder>/tb/version_N/config.yaml), or start a "
        "new run from its exported model (model.init_args.policy.init_args.path)"
    )
    if info.class_path is not None:
        saved = resolve_class(info.class_path)
        if saved is not wanted or saved is None:
            raise Geor1Error(
                f"--ckpt_path {info.path} does not fit this config: it was saved by {_short(info.class_path)}, this "
                f"config trains {_short(class_path)}; {hint}"
            )
        return
    if wanted is None or not info.hparams:
        return
    params = inspect.signature(wanted).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    foreign = sorted(k for k in info.hparams if k not in params and not k.startswith("_"))
    if foreign and not takes_any:
        raise Geor1Error(
            f"--ckpt_path {info.path} does not fit this config: its hyper-parameters ({', '.join(foreign[:6])}) are "
            f"not {_short(class_path)}'s, so another module class saved it; {hint}"
        )


def check_max_steps(info: CheckpointInfo, max_steps: int | None) -> None:
    """A resumed fit must have steps left to train: `max_steps` at or below the checkpoint's step is an error (it
    would stop at once and export the checkpoint's weights again)."""
    if max_steps is None or max_steps < 0 or max_steps > info.global_step:
        return
    raise Geor1Error(
        f"--ckpt_path {info.path} is at step {info.global_step}, and --trainer.max_steps {max_steps} leaves nothing to "
        f"train: the run stops at max_steps, so give a larger one (e.g. --trainer.max_steps {2 * info.global_step})"
    )


# Model settings a resumed run takes from its own config (file and command line) rather than from the checkpoint:
# where things are written and how often samples are logged, none of which the weights depend on.
RESUME_OWN_SETTINGS = ("export_dir", "log_completions_every_n_steps", "num_val_generations")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): node}


def apply_resume_settings(before: Namespace, after: Namespace, info: CheckpointInfo) -> None:
    """`after` is the model config with the checkpoint's hyper-parameters over this run's (`before`): put back this
    run's `RESUME_OWN_SETTINGS`, and say in the log what changed either way."""
    mine, theirs = before.get("init_args"), after.get("init_args")
    if mine is None or theirs is None:
        return
    for key in RESUME_OWN_SETTINGS:
        if key in mine and key in theirs and mine[key] != theirs[key]:
            log.info(
                "resuming %s: model.init_args.%s = %r from this run's config (the checkpoint's was %r)",
                info.path,
                key,
                mine[key],
                theirs[key],
            )
            theirs[key] = mine[key]
    ours, kept = _flat(mine.as_dict()), _flat(theirs.as_dict())
    ignored = sorted(k for k in ours if k in kept and ours[k] != kept[k])
    if ignored:
        log.warning(
            "resuming %s: the checkpoint's model settings are kept (they go with its weights and optimizer state); "
            "this run's differing values are ignored: %s (only %s follow this run's config on resume)",
            info.path,
            "; ".join(f"{k}: {ours[k]!r} -> checkpoint's {kept[k]!r}" for k in ignored[:8]),
            ", ".join(RESUME_OWN_SETTINGS),
        )


class Geor1CLI(LightningCLI):
    """LightningCLI with geor1's run rules (used by `geor1 fit|validate|test|predict` through `geor1.train`):

    - one folder per run: what the config leaves unset is derived from `trainer.default_root_dir`
      (`bind_run_folder`), and a fit refuses to write over an earlier run's checkpoints or export unless
      `--overwrite` (`check_run_folder`);
    - resume (`--ckpt_path`): a missing file, a checkpoint of another module class, or `max_steps` at or below the
      checkpoint's step are one-line errors; the checkpoint's model settings are used as LightningCLI does, except
      `RESUME_OWN_SETTINGS`, which follow this run's config; the log says which;
    - the progress bar reads `Epoch N` under a step limit (`StepProgressBar`).
    """

    resume: CheckpointInfo | None = None
    overwrite: bool = False

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="let fit write over the checkpoints and export of an earlier run in the same run folder",
        )

    def _parse_ckpt_path(self) -> None:  # LightningCLI's hook that merges the checkpoint's hyper-parameters
        sub = self.config.get("subcommand")
        cfg = self.config.get(sub) if sub else None
        ckpt_path = cfg.get("ckpt_path") if cfg is not None else None
        if (
            cfg is None
            or not ckpt_path
            or str(ckpt_path) in SPECIAL_CKPT_PATHS
            or str(ckpt_path).startswith("registry")
        ):
            return super()._parse_ckpt_path()
        info = read_checkpoint(ckpt_path)
        if sub not in ("fit", "validate"):  # evaluation configs: LightningCLI's own handling
            return super()._parse_ckpt_path()
        model = cfg.get("model")
        class_path = model.get("class_path") if isinstance(model, Namespace) else None
        if class_path:
            check_module_class(info, class_path)
        if sub == "fit":
            check_max_steps(info, cfg.trainer.get("max_steps"))
            log.info("resuming %s at step %d (max_steps %s)", info.path, info.global_step, cfg.trainer.get("max_steps"))
        self.resume = info
        if not info.path.is_file() or info.class_path is None or not isinstance(model, Namespace):
            return super()._parse_ckpt_path()  # a folder (LightningCLI reads no hyper-parameters there), or unnamed
        hparams = {k: v for k, v in info.hparams.items() if k not in ("_instantiator", "_class_path")}
        before = model.clone()
        merged = {sub: {"model": {"class_path": info.class_path, "dict_kwargs": hparams}}}
        try:
            self.config = self.parser.parse_object(merged, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        apply_resume_settings(before, self.config[sub]["model"], info)

    def before_instantiate_classes(self) -> None:
        sub = self.subcommand
        cfg = self.config.get(sub) if sub else None
        if cfg is None:
            return
        self.overwrite = bool(cfg.get("overwrite"))
        cfg["overwrite"] = False  # the saved config.yaml reruns without it
        if sub != "fit":
            return
        root = run_root(cfg.trainer.get("default_root_dir"))
        check_run_folder(
            root, self._export_dir(cfg, root), self._checkpoint_dirs(cfg, root), cfg.get("ckpt_path"), self.overwrite
        )

    @staticmethod
    def _export_dir(cfg: Namespace, root: Path) -> Path | None:
        model = cfg.get("model")
        cls = resolve_class(model.get("class_path", "")) if isinstance(model, Namespace) else None
        if cls is None or not issubclass(cls, PolicyModule):
            return None
        explicit = (model.get("init_args") or Namespace()).get("export_dir")
        return Path(explicit) if explicit else root / EXPORT

    @staticmethod
    def _checkpoint_dirs(cfg: Namespace, root: Path) -> list[Path]:
        """`<root>/checkpoints` and the explicit `dirpath` of every ModelCheckpoint in the config."""
        dirs = [root / CHECKPOINTS]
        callbacks = cfg.trainer.get("callbacks") or []
        for cb in callbacks if isinstance(callbacks, list) else [callbacks]:
            cls = resolve_class(cb.get("class_path", "")) if isinstance(cb, Namespace) else None
            dirpath = (cb.get("init_args") or Namespace()).get("dirpath") if cls else None
            if cls is not None and issubclass(cls, ModelCheckpoint) and dirpath:
                dirs.append(Path(dirpath))
        return dirs

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        wants_bar = config.get("enable_progress_bar") is not False and not config.get("barebones")
        if _RICH_AVAILABLE and wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs.setdefault("callbacks", [*callbacks, StepProgressBar()])
        return super().instantiate_trainer(**kwargs)

    def after_instantiate_classes(self) -> None:
        bind_run_folder(self.trainer, self.model if self.subcommand == "fit" else None)
