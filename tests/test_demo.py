"""A miniature `geor1 demo` end to end (the real one runs with `make demo`), run the way an installed geor1 runs it,
its stage-by-stage resume, and the demo's fit configs held to the shipped recipes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import NETGUARD, REPO, run_cli

from geor1 import Geor1Error
from geor1.demo import STAGES, DemoConfig, DemoPaths, recipes, run_demo
from geor1.metrics import wilson_interval

MODELS = ("base (instruct)", "SFT only", "SFT+GRPO", "GRPO only (Zero)")


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3  # standard table values for 8/10
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_miniature_demo_from_an_installed_package_runs_every_stage_and_resumes(tmp_path, monkeypatch):
    # the package alone, outside the checkout (no configs/ beside it): what a non-editable install has
    site = tmp_path / "site"
    shutil.copytree(REPO / "geor1", site / "geor1", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("PYTHONPATH", str(site))  # run_cli puts the network guard first
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, geor1.demo; print(geor1.demo.__file__); "
            "print(sorted(m for m in sys.modules if m.startswith('geor1.cli')))",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(NETGUARD), str(site)])),
    )
    assert probe.returncode == 0, probe.stderr
    where, cli_modules = probe.stdout.splitlines()
    assert where.startswith(str(site)), where
    assert cli_modules == "[]", f"the demo imports the CLI: {cli_modules}"

    out = tmp_path / "demo"
    res = run_cli("demo", "--quick", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    text = (out / "report.md").read_text()
    assert text in res.stdout  # `geor1 demo` prints the report
    for model in MODELS:
        assert f"| {model} |" in text
    assert all((out / stage / "DONE").is_file() for stage in STAGES)
    results = json.loads((out / "eval" / "results.json").read_text())
    assert list(results["models"]) == list(MODELS)
    sft = results["models"]["SFT only"]
    assert sft["pairing"]["n"] == 6 and sft["geolocate"]["n"] == 4 and sft["describe"]["n"] == 4
    assert sft["pairing_geo"]["n"] == sft["pairing_hard"]["n"] == 4 and sft["shuffled"]["shuffled"]["n"] == 4
    assert results["mean_location"]["geolocate"]["n"] == 4 and len(results["mean_location"]["point"]) == 2
    comps = results["comparisons"]
    assert set(comps) == {"SFT+GRPO - SFT only", "GRPO only (Zero) - base", "indirect", "baseline"}
    learned, base = sft["geolocate"], results["mean_location"]["geolocate"]
    for metric in ("acc@750km", "acc@2500km", "country_acc"):  # SFT - mean location, on the same 4 places
        assert comps["baseline"][metric]["diff"] == pytest.approx(learned[metric] - base[metric])
    assert "SFT only - mean location on geolocation" in text
    for section in ("## Pairing", "## Geolocation", "## Comparisons", "mean location of the training places"):
        assert section in text
    paths = DemoPaths(out)
    rows = {"base": "base (instruct)", "sft": "SFT only", "grpo": "SFT+GRPO", "zero": "GRPO only (Zero)"}
    for name, row in rows.items():
        assert (paths.model(name) / "config.json").is_file()
        assert paths.config(name).is_file()
        assert results["models"][row]["path"] == str(paths.model(name))
    for kind in ("geo", "hard"):
        assert (paths.episodes_of(kind) / "manifest.json").is_file()
    assert list((out / "grpo").rglob("events.out.tfevents.*"))
    assert (out / "eval" / "world_map.png").is_file() and (out / "eval" / "error_cdf.png").is_file()

    # a second run (in-process, this checkout's geor1) redoes nothing but the report
    stamps = {s: (out / s / "DONE").stat().st_mtime_ns for s in STAGES if s != "report"}
    assert run_demo(DemoConfig.quick(), out) == out / "report.md"
    assert stamps == {s: (out / s / "DONE").stat().st_mtime_ns for s in STAGES if s != "report"}
    # ... and another demo's settings are refused, not mixed with this one's finished stages
    with pytest.raises(Geor1Error, match="seed"):
        run_demo(DemoConfig.quick(seed=1), out)
    with pytest.raises(Geor1Error, match="unknown demo stage"):
        run_demo(DemoConfig.quick(), out, redo=["sft", "nope"])


def _flat(node, prefix: str = "") -> dict[str, object]:
    """Dotted keys -> leaf values; a list of components is keyed by class name (not position)."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()} or {
            prefix.rstrip("."): {}
        }
    if isinstance(node, list) and node and all(isinstance(c, dict) and "class_path" in c for c in node):
        return {k: v for c in node for k, v in _flat(c, f"{prefix}{c['class_path'].rsplit('.', 1)[-1]}.").items()}
    return {prefix.rstrip("."): node}


# What the demo sets itself in each recipe (its seed, sizes and folders); every other setting is the shipped one.
CHECKPOINT = "trainer.callbacks.ModelCheckpoint.init_args.dirpath"
FOLDERS = {"trainer.default_root_dir", "trainer.logger.init_args.save_dir", CHECKPOINT}
SFT_SETS = FOLDERS | {  # the SFT recipe's settings the demo sets (both SFT-shaped stages)
    "seed_everything",
    "trainer.max_steps",
    "trainer.val_check_interval",
    "model.init_args.scheduler.init_args.total_steps",
    "model.init_args.export_dir",
    "model.init_args.max_new_tokens",
    "data.init_args.roots",
    "data.init_args.root_weights",
}
DEMO_SETS = {
    "retrieval": FOLDERS
    | {
        "seed_everything",
        "trainer.max_epochs",
        "data.init_args.root",
        "data.init_args.ground_size",
        "data.init_args.sat_size",
        "model.init_args.scheduler.init_args.T_max",
    },
    "sft": SFT_SETS | {"model.init_args.policy.init_args.path"},  # the SFT stage starts from the base's export
    "instruct": SFT_SETS,
    "grpo": FOLDERS
    | {
        "seed_everything",
        "trainer.max_steps",
        "trainer.val_check_interval",
        "model.init_args.export_dir",
        "model.init_args.policy.init_args.path",
        "data.init_args.roots",
        "data.init_args.batch_size",
        "model.init_args.reward_kwargs.length.max_len",
        "model.init_args.rollout.group_size",
        "model.init_args.rollout.max_new_tokens",
    },
}


def test_demo_fit_configs_are_the_shipped_recipes_but_for_the_demos_own_settings(tmp_path):
    cfg, paths = DemoConfig(), DemoPaths(tmp_path)
    built = {
        "retrieval": recipes.retrieval(cfg, paths),
        "instruct": recipes.instruct(cfg, paths),
        "sft": recipes.sft(cfg, paths),
        "grpo": recipes.grpo(cfg, paths, "grpo", paths.model("sft"), cfg.grpo_steps, cfg.grpo_lr),
    }
    shipped_at = {"instruct": "sft/geoworld_instruct_tiny.yaml"}
    for name, config in built.items():
        path = REPO / "configs" / shipped_at.get(name, f"{name}/geoworld_tiny.yaml")
        shipped = _flat(yaml.safe_load(path.read_text()))
        ours = _flat(yaml.safe_load(yaml.safe_dump(config)))  # as written to <out>/configs/<stage>.yaml
        assert DEMO_SETS[name] <= set(ours), f"{name}: not set by the demo: {DEMO_SETS[name] - set(ours)}"
        assert {k: v for k, v in ours.items() if k not in DEMO_SETS[name]} == {
            k: v for k, v in shipped.items() if k not in DEMO_SETS[name]
        }, name
        stage = {"instruct": "base"}.get(name, name)
        assert ours[CHECKPOINT] == str(tmp_path / stage / "checkpoints")
    zero = recipes.grpo(cfg, paths, "zero", paths.base_model, cfg.zero_steps, cfg.zero_lr)
    assert zero["model"]["init_args"]["policy"]["init_args"]["path"] == str(paths.model("base"))
    assert recipes.sft(cfg, paths)["model"]["init_args"]["policy"]["init_args"]["path"] == str(paths.model("base"))
