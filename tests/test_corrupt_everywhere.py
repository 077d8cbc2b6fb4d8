"""Corrupt samples in every reader downstream of the DataModules: index building (embedding), CoT synthesis,
evaluation and `data inspect` each skip and count every bad sample, and every valid one arrives."""

from __future__ import annotations

import json

import pytest
from test_data_shards import plant_corrupt_shard

from geor1.data.geoworld import build_geoworld
from geor1.data.shards import write_manifest


@pytest.fixture(scope="module")
def world_with_corruption(tmp_path_factory):
    root = tmp_path_factory.mktemp("corrupt")
    world = build_geoworld(root / "gw", num_train=6, num_val=2, num_test=2, seed=8)
    valid, corrupt = plant_corrupt_shard(world / "train-000001.tar")
    (world / "train-000002.tar").write_bytes(b"")  # a zero-byte shard too
    manifest = json.loads((world / "manifest.json").read_text())
    train = manifest["splits"]["train"]
    train["shards"] += ["train-000001.tar", "train-000002.tar"]
    write_manifest(world, {"train": train}, manifest["source"], manifest["licence"])
    return world, valid, corrupt


def test_cot_synthesis_counts_corrupt_samples(world_with_corruption, tmp_path):
    from geor1.cot.synthesize import synthesize

    world, valid, corrupt = world_with_corruption
    report = synthesize(world, tmp_path / "sft", "geolocate", splits=("train",))
    assert report.total == 6 + len(valid) + len(corrupt)
    # undecodable images, bad JSON, missing or bad coordinates: none reaches an exemplar
    assert report.kept + sum(report.dropped.values()) == report.total
    assert report.kept == 6 + len(valid) + 1  # "no_sat" is a fine ground-only sample for geolocation
    assert report.dropped["corrupt_sample"] == len(corrupt) - 1


def test_eval_and_inspect_count_corrupt_samples(world_with_corruption, capsys):
    from geor1.data.inspect import inspect_shards
    from geor1.eval.commands import load_samples

    world, valid, corrupt = world_with_corruption
    samples = load_samples(str(world), "train", "geolocate", None)
    assert sorted(s.key for s in samples) == sorted([f"gw8_train_{i:06d}" for i in range(6)] + valid + ["no_sat"])
    assert f"{len(corrupt) - 1} corrupt samples skipped" in capsys.readouterr().out  # no_sat is fine here
    report = inspect_shards(world)
    assert report["splits"]["train"]["valid"] == 6 + len(valid) + 1  # ground-only samples are valid schema
    assert {c["key"] for c in report["corrupt"]} == set(corrupt) - {"no_sat"}
    assert [b["shard"].endswith("train-000002.tar") for b in report["broken_shards"]] == [True]


def test_index_build_embeds_only_valid_samples(world_with_corruption):
    from geor1.objectives.contrastive import ContrastiveModule
    from geor1.retrieval.embed import embed_shards

    world, valid, _ = world_with_corruption
    module = ContrastiveModule(backbone="regnetx_002", embed_dim=8).eval()
    ground, sat, meta = embed_shards(module, world, ["train"], (32, 48), 32)
    assert sorted(m["key"] for m in meta) == sorted([f"gw8_train_{i:06d}" for i in range(6)] + valid)
    assert ground.shape == sat.shape == (len(meta), 8)


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    import lightning as L
    import torch
    from conftest import run_cli

    from geor1 import Geor1Error
    from geor1.objectives.contrastive import ContrastiveModule
    from geor1.retrieval.embed import load_contrastive

    trainer = L.Trainer(max_steps=0, logger=False, accelerator="cpu")
    module = ContrastiveModule(backbone="regnetx_002", embed_dim=8)
    trainer.strategy.connect(module)
    ckpt = tmp_path / "enc.ckpt"
    trainer.save_checkpoint(ckpt)
    res = run_cli(
        "fit",
        "--config",
        "configs/debug/tiny_sft.yaml",
        "--trainer.max_steps",
        "1",
        "--ckpt_path",
        str(ckpt),
        f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    )
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "ckpt_path hyperparameters failed" in res.stderr or "does not fit this config" in res.stderr
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"] = {k: v for k, v in state["state_dict"].items() if not k.startswith("encoder.sat_proj")}
    torch.save(state, tmp_path / "broken.ckpt")
    with pytest.raises(Geor1Error, match="does not match its own config"):
        load_contrastive(tmp_path / "broken.ckpt")
