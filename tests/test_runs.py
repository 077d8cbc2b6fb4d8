"""Runs through `geor1 fit` (geor1.objectives.runs): one folder per run (checkpoints, TensorBoard and export derived
from `trainer.default_root_dir`, never over an earlier run's), the rules of `--ckpt_path` resumes, the optimizer
scalars every objective logs (`train/lr`, `train/grad_norm`, geor1.objectives.scalars), and the launch's smaller
rules: exact option names, the progress bar under a step limit, no empty log folder after a failed launch."""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import REPO
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from geor1 import Geor1Error
from geor1.cli import run_lightning
from geor1.objectives.runs import StepProgressBar, check_run_folder, remove_unused_version
from geor1.objectives.scalars import StepScalars

QUICK = [  # the debug recipe, 2 optimizer steps, no validation
    "--trainer.max_steps",
    "2",
    "--trainer.limit_val_batches",
    "0",
    "--trainer.log_every_n_steps",
    "1",
    "--trainer.enable_progress_bar",
    "false",
    "--model.init_args.num_val_generations",
    "0",
]


def _config(tmp: Path, **data) -> str:
    """configs/debug/tiny_sft.yaml with a ModelCheckpoint of every step (no dirpath: the run folder's) and, given,
    another `data` section."""
    cfg = yaml.safe_load((REPO / "configs" / "debug" / "tiny_sft.yaml").read_text())
    cfg["trainer"]["callbacks"].append(
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"every_n_train_steps": 1, "save_last": True},
        }
    )
    if data:
        cfg["data"] = data
    path = tmp / "tiny_sft_ckpt.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def _fit(*args: str) -> dict:
    """`geor1 fit ...` in-process -> the trainer and module LightningCLI built."""
    seen: dict = {}
    fit = L.Trainer.fit

    @functools.wraps(fit)  # LightningCLI reads fit's signature for its own options (--ckpt_path)
    def recording_fit(trainer, model, *a, **kw):
        seen["trainer"], seen["module"] = trainer, model
        return fit(trainer, model, *a, **kw)

    L.Trainer.fit = recording_fit  # type: ignore[method-assign]
    try:
        run_lightning(["fit", *args])
    finally:
        L.Trainer.fit = fit  # type: ignore[method-assign]
    return seen


def _scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(next(run.glob("tb/version_0/events.out.tfevents.*")))).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory) -> Path:
    """The debug recipe for 2 steps in its own run folder, its export_dir given explicitly (as older recipes did),
    so that the checkpoints carry it."""
    tmp = tmp_path_factory.mktemp("first")
    root = tmp / "run_a"
    _fit(
        "--config",
        _config(tmp),
        *QUICK,
        f"--trainer.default_root_dir={root}",
        f"--model.init_args.export_dir={root}/model",
    )
    return root


def test_one_folder_per_run_holds_checkpoints_logs_config_and_export(first_run):
    assert sorted(p.name for p in first_run.iterdir()) == ["checkpoints", "model", "tb"]
    assert sorted(p.name for p in (first_run / "checkpoints").iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert (first_run / "model" / "config.json").is_file()
    assert (first_run / "tb" / "version_0" / "config.yaml").is_file()
    scalars = _scalars(first_run)
    assert [v for _, v in scalars["train/lr"]] == pytest.approx([0.003, 0.003])  # the recipe's AdamW lr
    norms = [v for _, v in scalars["train/grad_norm"]]
    assert len(norms) == 2 and all(math.isfinite(v) and v > 0 for v in norms)


def test_a_second_run_in_the_same_folder_is_refused_unless_overwrite(first_run, tmp_path):
    with pytest.raises(Geor1Error, match=r"holds an earlier run.*--overwrite") as err:
        _fit("--config", _config(tmp_path), *QUICK, f"--trainer.default_root_dir={first_run}")
    assert "--ckpt_path" in str(err.value) and str(first_run / "checkpoints" / "last.ckpt") in str(err.value)


def test_run_folder_rules(tmp_path):
    root, ckpts, export = tmp_path / "run", tmp_path / "run" / "checkpoints", tmp_path / "run" / "model"
    check_run_folder(root, export, [ckpts], None, overwrite=False)  # nothing there yet
    ckpts.mkdir(parents=True)
    check_run_folder(root, export, [ckpts], None, overwrite=False)  # an empty folder is no earlier run
    (ckpts / "last.ckpt").write_bytes(b"x")
    with pytest.raises(Geor1Error, match="--overwrite"):
        check_run_folder(root, export, [ckpts], None, overwrite=False)
    check_run_folder(root, export, [ckpts], None, overwrite=True)
    check_run_folder(root, export, [ckpts], str(ckpts / "last.ckpt"), overwrite=False)  # the same run, resumed
    other = tmp_path / "other"
    export.mkdir()
    (export / "config.json").write_text("{}")
    with pytest.raises(Geor1Error, match="model"):  # another run's checkpoint, into a folder with an export
        check_run_folder(root, export, [], str(other / "checkpoints" / "last.ckpt"), overwrite=False)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_resume_takes_this_runs_export_dir_and_keeps_the_checkpoints_model_settings(first_run, tmp_path):
    before = (first_run / "model" / "model.safetensors").stat().st_mtime_ns
    root_b = tmp_path / "run_b"
    records = _Records()
    logger = logging.getLogger("geor1.objectives.runs")
    logger.addHandler(records)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        seen = _fit(
            "--config",
            _config(tmp_path),
            *QUICK,
            "--trainer.max_steps",
            "3",
            f"--trainer.default_root_dir={root_b}",
            f"--model.init_args.export_dir={root_b}/model",  # a path: this run's wins
            "--model.init_args.max_length",
            "256",  # a model setting: the checkpoint's (512) goes with its weights
            "--ckpt_path",
            str(first_run / "checkpoints" / "last.ckpt"),
        )
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    assert seen["trainer"].global_step == 3
    assert (root_b / "model" / "config.json").is_file()
    assert (first_run / "model" / "model.safetensors").stat().st_mtime_ns == before  # the first run's export kept
    assert torch.load(root_b / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3
    assert seen["module"].export_dir == f"{root_b}/model" and seen["module"].max_length == 512
    text = "\n".join(records.lines)
    assert f"export_dir = '{root_b}/model' from this run's config" in text, text
    assert "max_length: 256 -> checkpoint's 512" in text, text


def test_resume_errors_are_one_line_geor1_errors(first_run, tmp_path):
    last = str(first_run / "checkpoints" / "last.ckpt")
    out = f"--trainer.default_root_dir={tmp_path / 'x'}"
    for steps in ("2", "1"):  # at or below the checkpoint's step 2: nothing to train
        with pytest.raises(Geor1Error, match=r"is at step 2.*--trainer\.max_steps"):
            _fit("--config", _config(tmp_path), out, "--trainer.max_steps", steps, "--ckpt_path", last)
    grpo = str(REPO / "configs" / "grpo" / "geoworld_tiny.yaml")
    with pytest.raises(Geor1Error, match="saved by SFTModule, this config trains GRPOModule"):
        _fit("--config", grpo, out, "--ckpt_path", last)
    with pytest.raises(Geor1Error, match="no such checkpoint"):
        _fit("--config", _config(tmp_path), out, "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_sft_on_shards_without_responses_points_at_cot_synthesize_and_leaves_no_log_folder(tmp_path):
    from conftest import random_episodes

    from geor1.data.geoworld import build_geoworld

    world = build_geoworld(tmp_path / "gw", num_train=6, num_val=2, num_test=1, seed=2)
    episodes = random_episodes(world, tmp_path / "episodes", splits=("train", "val"))
    data = {"class_path": "geor1.data.ChatShardDataModule", "init_args": {"roots": [str(episodes)], "batch_size": 2}}
    root = tmp_path / "run"
    with pytest.raises(Geor1Error, match=r"have none.*geor1 cot synthesize"):
        _fit("--config", _config(tmp_path, **data), *QUICK, f"--trainer.default_root_dir={root}")
    assert not (root / "tb").exists()  # the failed launch's version folder (config.yaml, hparams.yaml) removed


def test_unused_version_folder_is_removed_only_when_it_holds_launch_files(tmp_path):
    version = tmp_path / "tb" / "version_0"
    version.mkdir(parents=True)
    for name in ("config.yaml", "hparams.yaml", "events.out.tfevents.1.host.0"):
        (version / name).write_text("x")
    kept = tmp_path / "tb" / "version_1"
    kept.mkdir()
    (kept / "config.yaml").write_text("x")
    (kept / "notes.txt").write_text("mine")
    assert remove_unused_version(version) and not version.exists()
    assert not remove_unused_version(kept) and kept.is_dir()


def test_option_names_are_exact_not_prefixes():
    with pytest.raises(SystemExit) as done:
        run_lightning(["fit", "--config", str(REPO / "configs" / "debug" / "tiny_sft.yaml"), "--trainer.max_step", "1"])
    assert done.value.code == 2


def test_progress_bar_under_a_step_limit_reads_epoch_n():
    bar = StepProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=-1)  # max_steps set, max_epochs unset: Lightning's "no epoch limit"
    assert bar._get_train_description(0).strip() == "Epoch 0"
    bar._trainer = SimpleNamespace(max_epochs=3)
    assert bar._get_train_description(1).strip() == "Epoch 1/2"


class _Line(StepScalars):
    """loss = w . x with x = (3, 4, 0): the gradient is x, its norm 5, whatever w is."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum()

    def train_dataloader(self):
        x = torch.tensor([[3.0, 4.0, 0.0]] * 4)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=1)

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _Recorder(L.pytorch.loggers.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    name, version = "rec", 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def test_step_scalars_are_the_steps_lr_and_the_gradient_norm_before_clipping(tmp_path):
    rec = _Recorder()
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=rec,
        log_every_n_steps=1,
        gradient_clip_val=0.01,  # clipped, the norm would read 0.01
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_Line())
    lr = [m["train/lr"] for _, m in rec.rows if "train/lr" in m]
    norm = [m["train/grad_norm"] for _, m in rec.rows if "train/grad_norm" in m]
    assert lr == pytest.approx([0.1, 0.05, 0.1 / 3])  # the rate each step used (LambdaLR moves it after)
    assert norm == pytest.approx([5.0, 5.0, 5.0])


def alternating_reward(completions: list[str], targets: list, **_) -> list[float | None]:
    """1, 0, 1, 0, ... over the completions (a GRPO reward by dotted path, for the test below)."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def test_grpo_logs_the_steps_lr_and_the_gradient_norm_before_its_own_clipping(tmp_path):
    from geor1.data import ToyPairingDataModule
    from geor1.model import TinyPolicy
    from geor1.objectives.grpo import GRPOModule
    from geor1.objectives.grpo_settings import LossSettings, RolloutSettings

    L.seed_everything(0)
    module = GRPOModule(
        TinyPolicy(seed=0),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1)),
        rewards={"test_runs.alternating_reward": 1.0},  # never a tie within a group: the loss has a gradient
        rollout=RolloutSettings(group_size=3, max_new_tokens=8),
        loss=LossSettings(beta=0.04, max_grad_norm=1e-6),
        log_completions_every_n_steps=0,
    )
    measured: list[float] = []  # the norm at the clipping call, computed here from the gradients themselves
    clip = module.clip_gradients

    def spy(opt, gradient_clip_val=None, gradient_clip_algorithm=None):
        grads = [p.grad.flatten() for p in module.policy.parameters() if p.grad is not None]
        measured.append(float(torch.cat(grads).norm()))
        return clip(opt, gradient_clip_val=gradient_clip_val, gradient_clip_algorithm=gradient_clip_algorithm)

    module.clip_gradients = spy  # type: ignore[method-assign]
    rec = _Recorder()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=rec,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=ToyPairingDataModule(num_train=8, num_val=2, num_candidates=2, batch_size=2))
    rows = [m for _, m in rec.rows if "train/lr" in m]
    assert [m["train/lr"] for m in rows] == pytest.approx([0.5, 0.25])
    assert [m["train/grad_norm"] for m in rows] == pytest.approx(measured, rel=1e-4)
    assert len(measured) == 2 and all(v > 1e-3 for v in measured)  # far above the clip: logged before clipping
