"""The `geor1` / `lightning` entry points. Subprocesses cost ~5 s of imports each, so these are few and batched."""

from __future__ import annotations

import socket

import pytest
from conftest import REPO, run_cli

CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))


def test_network_is_blocked_in_tests():
    with pytest.raises(OSError, match="block network"):
        socket.create_connection(("93.184.216.34", 80), timeout=1)


def test_help_lists_every_command():
    for entry in ("geor1", "lightning"):
        res = run_cli(entry, "--help")
        assert res.returncode == 0, res.stderr
        for command in ("fit", "validate", "test", "predict", "model", "demo"):
            assert command in res.stdout
    assert run_cli("--help").returncode == 0  # python -m geor1


def test_every_config_parses():
    assert CONFIGS, "no configs found"
    from geor1.cli import run_lightning

    for config in CONFIGS:
        # in-process: LightningCLI parses, instantiates the classes, prints the config and exits 0
        with pytest.raises(SystemExit) as done:
            run_lightning(["fit", "--config", str(config), "--print_config"], prog="geor1")
        assert done.value.code in (0, None), config


def test_fit_tiny_config_with_both_entry_points(tmp_path):
    for entry in ("geor1", "lightning"):
        out = tmp_path / entry
        res = run_cli(
            entry,
            "fit",
            "--config",
            "configs/debug/tiny_sft.yaml",
            "--trainer.max_steps",
            "2",
            f"--trainer.default_root_dir={out}",  # the run folder: logs, config and export all follow it
        )
        assert res.returncode == 0, res.stderr[-3000:]
        assert list(out.glob("tb/version_0/events.out.tfevents.*")), f"{entry}: no TensorBoard log in {out}/tb"
        assert (out / "tb" / "version_0" / "config.yaml").is_file(), f"{entry}: the run's config was not saved"
        assert (out / "model" / "config.json").is_file(), f"{entry}: no export in {out}/model"


def test_user_errors_are_one_line(tmp_path):
    res = run_cli(
        "fit",
        "--config",
        "configs/debug/tiny_sft.yaml",
        "--model.init_args.policy.class_path",
        "geor1.model.Policy",
        f"--model.init_args.policy.init_args.path={tmp_path / 'nope'}",
    )
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    assert f"model path '{tmp_path / 'nope'}' does not exist" in res.stderr


def test_model_tiny_writes_a_loadable_folder(tmp_path):
    res = run_cli("model", "tiny", "--out", str(tmp_path / "tiny"))
    assert res.returncode == 0, res.stderr
    from geor1.model import Policy

    policy = Policy(str(tmp_path / "tiny"))
    assert sum(p.numel() for p in policy.parameters()) > 100_000
