"""Exact resume: an SFT run stopped mid-epoch after a checkpoint and resumed with `ckpt_path` logs the same losses,
on the same samples in the same order, as the uninterrupted run (CPU, same seed)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from geor1.cot.synthesize import synthesize
from geor1.data.chat import ChatShardDataModule
from geor1.data.geoworld import build_geoworld
from geor1.model import TinyPolicy
from geor1.objectives.sft import SFTModule


class Record(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []
        self.keys: list[list[str]] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if outputs:  # GRPO optimizes manually and returns no loss
            self.losses.append(float(outputs["loss"]))
        self.keys.append([s.key for s in batch])


@pytest.fixture(scope="module")
def exemplars(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    world = build_geoworld(root / "gw", num_train=10, num_val=2, num_test=2, seed=5)
    synthesize(world, root / "sft", "geolocate")
    return root / "sft"


def _run(module, dm, record: Record, root, max_steps: int, ckpt_path, every: int | None) -> Record:
    """Fit `module` on `dm` for `max_steps`, checkpointing every `every` steps, resuming from `ckpt_path`."""
    callbacks = [record]
    if every:
        callbacks.append(
            L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=every, save_top_k=-1)
        )
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=root,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return record


def _fit(exemplars, root, max_steps: int, ckpt_path=None, every: int | None = None) -> Record:
    L.seed_everything(0)
    module = SFTModule(
        TinyPolicy(seed=0), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), max_length=512, num_val_generations=0
    )
    dm = ChatShardDataModule(str(exemplars), batch_size=3, shuffle_buffer=4, val_split="", seed=1)
    return _run(module, dm, Record(), root, max_steps, ckpt_path, every)


def test_mid_epoch_resume_is_exact(exemplars, tmp_path):
    # 10 samples, batches of 3: 4 batches per epoch; 7 steps cross an epoch boundary; stop after step 2 (mid-epoch)
    full = _fit(exemplars, tmp_path / "full", max_steps=7)
    first = _fit(exemplars, tmp_path / "cut", max_steps=2, every=2)
    ckpt = next((tmp_path / "cut" / "ckpt").glob("*.ckpt"))
    rest = _fit(exemplars, tmp_path / "cut", max_steps=7, ckpt_path=str(ckpt))
    assert first.keys + rest.keys == full.keys  # no sample skipped or seen twice, same order
    assert first.losses + rest.losses == pytest.approx(full.losses, abs=1e-6)


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    from conftest import random_episodes

    root = tmp_path_factory.mktemp("episodes")
    world = build_geoworld(root / "gw", num_train=10, num_val=2, num_test=2, seed=6)
    return random_episodes(world, root / "ep")


def _fit_grpo(episodes, root, max_steps: int, ckpt_path=None, every: int | None = None) -> Record:
    from geor1.objectives.grpo import GRPOModule
    from geor1.objectives.grpo_settings import LossSettings, RolloutSettings

    L.seed_everything(0)
    record = Record()
    module = GRPOModule(
        TinyPolicy(seed=0),
        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
        rollout=RolloutSettings(group_size=2, max_new_tokens=6),
        loss=LossSettings(beta=0.04),
        log_completions_every_n_steps=0,
        rewards={"accuracy": 1.0, "format": 1.0, "repetition": 1.0},
    )
    record.texts = []
    original = module.policy.generate

    def generate(*args, **kwargs):
        rollout = original(*args, **kwargs)
        record.texts.append(rollout.texts)
        return rollout

    module.policy.generate = generate
    dm = ChatShardDataModule(str(episodes), task="pairing", batch_size=3, shuffle_buffer=4, val_split="", seed=1)
    return _run(module, dm, record, root, max_steps, ckpt_path, every)


def test_grpo_resume_replays_the_same_samples(episodes, tmp_path):
    full = _fit_grpo(episodes, tmp_path / "full", max_steps=6)
    first = _fit_grpo(episodes, tmp_path / "cut", max_steps=2, every=2)
    ckpt = next((tmp_path / "cut" / "ckpt").glob("*.ckpt"))
    rest = _fit_grpo(episodes, tmp_path / "cut", max_steps=6, ckpt_path=str(ckpt))
    assert first.texts + rest.texts == full.texts  # same completions sampled: the RNG state was restored


@pytest.mark.parametrize("sig, ckpt_name, step", [("term", "sigterm.ckpt", 3), ("kill", "last.ckpt", 2)])
def test_preempted_runs_resume_exactly(exemplars, tmp_path, sig, ckpt_name, step):
    """SIGTERM: saves a checkpoint after the batch in progress; SIGKILL: the last periodic checkpoint survives."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent / "netguard"), os.environ.get("PYTHONPATH", "")]),
    )
    res = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("sigterm_run.py")), str(exemplars), str(tmp_path / "pre"), sig],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert sig == "term" or res.returncode != 0  # killed; after SIGTERM Lightning exits on its own
    ckpt = tmp_path / "pre" / ckpt_name
    assert ckpt.is_file(), res.stderr[-2000:]
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == step
    full = _fit(exemplars, tmp_path / "full", max_steps=7)
    rest = _fit(exemplars, tmp_path / "pre", max_steps=7, ckpt_path=str(ckpt))
    assert rest.keys == full.keys[step:] and rest.losses == pytest.approx(full.losses[step:], abs=1e-6)
