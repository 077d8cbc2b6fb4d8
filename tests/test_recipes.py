"""Every recipe in `configs/` runs to its first optimizer steps through the real LightningCLI entry point
(`geor1.cli.run_lightning`, in-process), on CPU, with every setting as shipped except those listed per recipe in
`OVERRIDES` below: the strategy (one CPU device), devices, precision, lengths (max_steps, limit batches,
max_new_tokens), the model path (the real-shaped Qwen2.5-VL fixture), data roots (tiny shards written here) and
the run folder (`trainer.default_root_dir`, into tmp_path: checkpoints, TensorBoard logs and the export follow it).
The overridden config is written next to the run and is the exact config used.

A new recipe without an entry here fails `test_every_recipe_has_an_override_list`: recipes are never untested.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO

from geor1.cli import run_lightning
from geor1.objectives.base import PolicyModule


def stage_config(recipe: str, dest: Path, overrides: dict) -> list[str]:
    """Write configs/`recipe` with `overrides` (dotted paths, list items by index) to `dest`; the `fit` arguments that
    run it. The written file is the exact config."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / recipe).read_text())
    for dotted, value in overrides.items():
        node = cfg
        *keys, last = dotted.split(".")
        for key in keys:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[int(last) if isinstance(node, list) else last] = value
    dest.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ["--config", str(dest)]


STEPS = 2  # optimizer steps per recipe

# The exact overrides of each recipe (dotted paths into the YAML; list items by index). Placeholders:
# {out} the run's folder, {real} the real-shaped Qwen2.5-VL fixture, {world} tiny GeoWorld shards, {episodes}
# K=2 pairing episodes of it, {sft_pairing} / {sft_geolocate} fact-checked CoT exemplars of both, {instruct} the
# instruction questions of the world's images.
SINGLE_CPU = {"trainer.accelerator": "cpu", "trainer.devices": 1, "trainer.num_nodes": 1, "trainer.strategy": "auto"}
OVERRIDES: dict[str, dict] = {
    "debug/tiny_sft.yaml": {
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "trainer.default_root_dir": "{out}",
    },
    "sft/geoworld_instruct_tiny.yaml": {
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "model.init_args.max_new_tokens": 8,
        "data.init_args.roots": ["{instruct}"],
        "trainer.default_root_dir": "{out}",
    },
    "sft/geoworld_tiny.yaml": {
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "model.init_args.max_new_tokens": 8,
        "model.init_args.policy.init_args.path": "{real}",
        "data.init_args.roots": ["{sft_pairing}", "{sft_geolocate}"],
        "trainer.default_root_dir": "{out}",
    },
    "grpo/geoworld_tiny.yaml": {
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "model.init_args.rollout.max_new_tokens": 4,
        "model.init_args.policy.init_args.path": "{real}",
        "data.init_args.roots": "{episodes}",
        "trainer.default_root_dir": "{out}",
    },
    "grpo/geoworld_tiny_curriculum.yaml": {
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "model.init_args.rollout.max_new_tokens": 4,
        "model.init_args.policy.init_args.path": "{real}",
        "data.init_args.roots": ["{episodes}", "{episodes}"],
        "data.init_args.samples_per_epoch": 8,  # a pass of 1 step: both passes of the run read their own roots
        "trainer.default_root_dir": "{out}",
    },
    "retrieval/geoworld_tiny.yaml": {
        "trainer.accelerator": "cpu",  # shipped `auto` would take a GPU where one is present
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "data.init_args.root": "{world}",
        "trainer.default_root_dir": "{out}",
    },
    "sft/qwen2_5_vl_7b.yaml": {
        **SINGLE_CPU,
        "trainer.precision": "32-true",
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "model.init_args.max_new_tokens": 8,
        "model.init_args.policy.init_args.path": "{real}",
        "data.init_args.roots": ["{sft_pairing}", "{sft_geolocate}"],
        "trainer.default_root_dir": "{out}",
    },
    "grpo/qwen2_5_vl_7b.yaml": {
        **SINGLE_CPU,
        "trainer.precision": "32-true",
        "trainer.max_steps": STEPS,
        "trainer.limit_val_batches": 1,
        "model.init_args.rollout.max_new_tokens": 4,
        "model.init_args.policy.init_args.path": "{real}",
        "data.init_args.roots": "{episodes}",
        "trainer.default_root_dir": "{out}",
    },
}
# configs/eval/ holds evaluation configs (`geor1 test|predict`): tests/test_eval_loop.py runs every one of them
RECIPES = sorted(
    str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").rglob("*.yaml") if p.parent.name != "eval"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """Tiny GeoWorld (several shards per split), K=2 pairing episodes, CoT exemplars, the real-shaped model."""
    from conftest import random_episodes

    from geor1.cot.synthesize import synthesize
    from geor1.data.geoworld import build_geoworld
    from geor1.data.instruct import build_instruct
    from geor1.model.real_shaped import save_real_shaped_qwen2_5_vl

    root = tmp_path_factory.mktemp("recipes")
    world = build_geoworld(root / "geoworld", num_train=16, num_val=4, num_test=2, seed=3, max_count=4)
    random_episodes(world, root / "episodes", splits=("train", "val"))
    synthesize(root / "episodes", root / "sft_pairing", "pairing")
    synthesize(world, root / "sft_geolocate", "geolocate", compact=True)
    build_instruct(world, root / "instruct")
    real = save_real_shaped_qwen2_5_vl(root / "qwen2_5_vl_real_shaped")
    return {
        "world": str(world),
        "episodes": str(root / "episodes"),
        "sft_pairing": str(root / "sft_pairing"),
        "sft_geolocate": str(root / "sft_geolocate"),
        "instruct": str(root / "instruct"),
        "real": str(real),
    }


def _fill(value, places: dict[str, str]):
    if isinstance(value, str):
        return value.format(**places)
    if isinstance(value, list):
        return [_fill(v, places) for v in value]
    return value


def test_every_recipe_has_an_override_list():
    assert RECIPES and set(RECIPES) == set(OVERRIDES), set(RECIPES) ^ set(OVERRIDES)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_to_its_first_optimizer_steps(recipe, data, tmp_path, monkeypatch):
    _run_recipe(recipe, OVERRIDES[recipe], data, tmp_path, monkeypatch)


# The 7B GRPO recipe as someone with one GPU would run it: its memory knobs that apply without FSDP2 turned on
# (activation checkpointing of the policy, prompts in micro-batches of `loss.micro_batch_prompts: 1`), which the
# single-device run above does not reach (the shipped recipe checkpoints through FSDP2 and has 1 prompt per rank).
ONE_DEVICE_7B_GRPO = {
    **OVERRIDES["grpo/qwen2_5_vl_7b.yaml"],
    "model.init_args.policy.init_args.gradient_checkpointing": True,  # with the shipped share_prefix: true
    "data.init_args.batch_size": 2,  # 2 prompts per step, shipped loss.micro_batch_prompts: 1
}


def test_7b_grpo_recipe_on_one_device_with_checkpointing_and_micro_batches(data, tmp_path, monkeypatch):
    _run_recipe("grpo/qwen2_5_vl_7b.yaml", ONE_DEVICE_7B_GRPO, data, tmp_path, monkeypatch)


def _run_recipe(recipe: str, overrides: dict, data: dict[str, str], tmp_path: Path, monkeypatch) -> None:
    """`geor1 fit --config <recipe + overrides>` in-process; checks STEPS optimizer steps, a finite loss, moved
    weights (SFT, retrieval), a TensorBoard log and the export."""
    out = tmp_path / "run"
    places = {**data, "out": str(out)}
    overrides = {k: _fill(v, places) for k, v in overrides.items()}
    args = stage_config(recipe, tmp_path / "config.yaml", overrides)

    seen: dict[str, object] = {}
    fit = L.Trainer.fit

    def recording_fit(trainer, model, *a, **kw):  # the trainer and module LightningCLI built, and the weights before
        seen["trainer"], seen["module"] = trainer, model
        seen["before"] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        return fit(trainer, model, *a, **kw)

    monkeypatch.setattr(L.Trainer, "fit", recording_fit)
    run_lightning(["fit", *args], prog="geor1")

    trainer, module = seen["trainer"], seen["module"]
    assert trainer.global_step == STEPS, f"{recipe}: {trainer.global_step} optimizer steps, expected {STEPS}"
    loss = trainer.callback_metrics.get("train/loss")
    assert loss is not None and math.isfinite(float(loss)), f"{recipe}: train/loss {loss}"
    if "model.init_args.rollout.max_new_tokens" in overrides:  # the nested YAML settings reached the module
        assert module.rollout_settings.max_new_tokens == overrides["model.init_args.rollout.max_new_tokens"]
        assert module.rollout_settings.group_size == 8 and module.loss_settings.beta == 0.04  # as shipped
    if "grpo" not in recipe:  # GRPO's first update is zero when every group's rewards tie (zero advantages)
        moved = [
            n
            for n, p in module.named_parameters()
            if n in seen["before"] and not torch.equal(p.detach(), seen["before"][n])
        ]
        assert moved, f"{recipe}: no parameter changed in {STEPS} optimizer steps"
    for name in ("train/lr", "train/grad_norm"):  # every objective logs its optimizer's scalars
        value = trainer.callback_metrics.get(name)
        assert value is not None and math.isfinite(float(value)) and float(value) >= 0, f"{recipe}: {name} {value}"
    assert float(trainer.callback_metrics["train/lr"]) > 0
    # one folder per run: the recipe's default_root_dir alone placed the logs, the config and the export
    assert list((out / "tb").glob("version_0/events.out.tfevents.*")), f"{recipe}: no TensorBoard log in {out}/tb"
    assert (out / "tb" / "version_0" / "config.yaml").is_file(), f"{recipe}: the run's config was not saved"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "run"], f"{recipe}: wrote outside {out}"
    if isinstance(module, PolicyModule):
        assert (out / "model" / "config.json").is_file(), f"{recipe}: no export in {out}/model"
