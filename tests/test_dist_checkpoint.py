"""Distributed checkpoints under FSDP2 (`ModelParallelStrategy`, 2 CPU processes, gloo): a GRPO run killed after a
checkpoint resumes exactly (same batches, same per-rank samples, same losses, same final weights), and
`geor1 model export` of the distributed checkpoint is a folder plain `transformers` loads, with the weights the
2-process run gathered at fit end.

Run A trains 4 steps (checkpoints at 2 and 4) and is SIGKILLed on both ranks as step 5 starts; run B resumes from
A's step-2 checkpoint and trains steps 3-4 (then exports, gathering the full weights collectively)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import NETGUARD, run_cli

SCRIPT = Path(__file__).with_name("dist_ckpt_run.py")


@pytest.fixture(scope="module")
def episodes(tmp_path_factory) -> Path:
    from conftest import random_episodes

    from geor1.data.geoworld import build_geoworld

    root = tmp_path_factory.mktemp("dist_episodes")
    world = build_geoworld(root / "gw", num_train=8, num_val=2, num_test=2, seed=6)
    return random_episodes(world, root / "ep")


def _launch(episodes: Path, out: Path, tag: str, max_steps: int, *extra: str) -> subprocess.CompletedProcess:
    """The runner on 2 processes (Lightning starts rank 1); its own session, so a stuck run is killed whole."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(NETGUARD), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(episodes), str(out), tag, str(max_steps), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=out,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"2-process run {tag} hung:\n{stderr[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a rank left behind by a killed rank 0
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _rows(out: Path, tag: str, rank: int) -> list[dict]:
    return [json.loads(line) for line in (out / f"{tag}.rank{rank}.jsonl").read_text().splitlines()]


def test_killed_fsdp2_run_resumes_exactly_and_exports(episodes, tmp_path):
    from transformers import AutoModelForImageTextToText

    a = _launch(episodes, tmp_path, "a", 5, "--kill-at", "4")
    assert a.returncode != 0, "run A was to be killed"
    ckpt2, ckpt4 = tmp_path / "ckpt" / "epoch=0-step=2.ckpt", tmp_path / "ckpt" / "epoch=1-step=4.ckpt"
    assert ckpt2.is_dir() and ckpt4.is_dir(), (sorted(p.name for p in (tmp_path / "ckpt").iterdir()), a.stderr[-3000:])
    # each rank wrote its own shard; rank 0 the metadata (with every rank's sampling generator)
    assert sorted(p.name for p in ckpt2.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "meta.pt"]
    meta = torch.load(ckpt2 / "meta.pt", weights_only=True)
    rng = meta["rollout_rng"]
    assert rng["world_size"] == 2 and not torch.equal(rng["rollout"][0], rng["rollout"][1])

    b = _launch(episodes, tmp_path, "b", 4, "--ckpt", str(ckpt2))
    assert b.returncode == 0, b.stderr[-3000:]
    for rank in (0, 1):
        full, resumed = _rows(tmp_path, "a", rank), _rows(tmp_path, "b", rank)
        assert [r["step"] for r in full] == [1, 2, 3, 4] and [r["step"] for r in resumed] == [3, 4]
        assert all(r["world"] == 2 for r in full + resumed)
        assert [r["keys"] for r in resumed] == [r["keys"] for r in full[2:]]  # data position
        assert [r["texts"] for r in resumed] == [r["texts"] for r in full[2:]]  # this rank's own sampling stream
        assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in full[2:]], abs=1e-6)
    texts = [_rows(tmp_path, "a", r)[0]["texts"] for r in (0, 1)]
    keys = [set(_rows(tmp_path, "a", r)[0]["keys"]) for r in (0, 1)]
    assert not keys[0] & keys[1] and texts[0] != texts[1]  # the ranks saw different prompts and samples

    # offline export of run A's step-4 distributed checkpoint, on one process, with plain transformers on top
    config = tmp_path / "policy.yaml"
    config.write_text(
        "model:\n  class_path: geor1.objectives.GRPOModule\n  init_args:\n    policy:\n"
        "      class_path: geor1.model.TinyPolicy\n      init_args: {seed: 1, hidden_size: 64}\n"
    )
    res = run_cli("model", "export", "--ckpt", str(ckpt4), "--config", str(config), "--out", str(tmp_path / "hf"))
    assert res.returncode == 0, res.stderr[-3000:]
    offline = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf", local_files_only=True).state_dict()
    # run B's fit-end export: its full weights gathered collectively at step 4, written by rank 0
    gathered = AutoModelForImageTextToText.from_pretrained(tmp_path / "b_export", local_files_only=True).state_dict()
    assert offline.keys() == gathered.keys()
    for k in offline:
        assert torch.equal(offline[k], gathered[k]), k  # exact resume of the weights, and both export paths agree
    from geor1.model import TinyPolicy

    initial = TinyPolicy(seed=0, hidden_size=64).model.state_dict()
    assert any(not torch.equal(offline[k], initial[k]) for k in offline)  # trained: the weights moved


def test_export_refuses_a_checkpoint_of_another_model(tmp_path):
    """A checkpoint whose tensors do not fit the config's policy, or no checkpoint: an error naming file and key."""
    from geor1 import Geor1Error
    from geor1.model import TinyPolicy
    from geor1.model.export import export_checkpoint

    policy = TinyPolicy(seed=0, hidden_size=64)
    state = {f"policy.{k}": v for k, v in policy.state_dict().items()}
    key = next(k for k in state if k.endswith("q_proj.weight"))
    state[key] = torch.zeros(3, 3)
    torch.save({"state_dict": state, "global_step": 1}, tmp_path / "bad.ckpt")
    config = tmp_path / "c.yaml"
    config.write_text(
        "model:\n  class_path: geor1.objectives.SFTModule\n  init_args:\n    policy:\n"
        "      class_path: geor1.model.TinyPolicy\n      init_args: {hidden_size: 64}\n"
    )
    with pytest.raises(Geor1Error, match=r"bad\.ckpt.*" + key.replace(".", r"\.") + r".*\(3, 3\)"):
        export_checkpoint(tmp_path / "bad.ckpt", config, tmp_path / "o")
    del state[key]
    torch.save({"state_dict": state}, tmp_path / "short.ckpt")
    with pytest.raises(Geor1Error, match=r"short\.ckpt.*" + key.replace(".", r"\.") + "' is missing"):
        export_checkpoint(tmp_path / "short.ckpt", config, tmp_path / "o")
    torch.save({"weights": 1}, tmp_path / "other.ckpt")
    with pytest.raises(Geor1Error, match=r"other\.ckpt.*'state_dict'"):
        export_checkpoint(tmp_path / "other.ckpt", config, tmp_path / "o")
    with pytest.raises(Geor1Error, match=r"none\.ckpt' does not exist"):
        export_checkpoint(tmp_path / "none.ckpt", config, tmp_path / "o")
    (tmp_path / "c2.yaml").write_text("trainer: {}\n")
    with pytest.raises(Geor1Error, match=r"c2\.yaml.*model\.init_args\.policy"):
        export_checkpoint(tmp_path / "bad.ckpt", tmp_path / "c2.yaml", tmp_path / "o")


@pytest.mark.parametrize("lora", [False, True])
def test_export_of_a_single_file_checkpoint_loads_with_transformers(tmp_path, lora):
    """A one-process Lightning checkpoint (a .ckpt file) -> `geor1 model export` (the CLI handler, in-process): plain
    transformers loads the folder and its weights are the trained policy's (LoRA merged); `--adapter-only` writes
    the adapter alone, which PEFT puts back on the base to give the same model."""
    import argparse

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from geor1.model import LoraSpec, TinyPolicy
    from geor1.model.commands import add_commands

    spec = LoraSpec(r=4, alpha=8, dropout=0.0) if lora else None
    policy = TinyPolicy(seed=0, hidden_size=64, lora=spec)
    with torch.no_grad():  # "trained" weights: differ from the seed-0 init the config builds
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    torch.save(
        {"state_dict": {f"policy.{k}": v for k, v in policy.state_dict().items()}, "global_step": 3},
        tmp_path / "last.ckpt",
    )
    lora_args = "{r: 4, alpha: 8, dropout: 0.0}" if lora else "null"
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n  class_path: geor1.objectives.SFTModule\n  init_args:\n    policy:\n"
        "      class_path: geor1.model.TinyPolicy\n"
        f"      init_args: {{hidden_size: 64, lora: {lora_args}}}\n"
    )
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))

    def export(*extra: str) -> Path:
        ns = parser.parse_args(
            [
                "model",
                "export",
                "--ckpt",
                str(tmp_path / "last.ckpt"),
                "--config",
                str(config),
                "--out",
                str(tmp_path / ("out" + "".join(extra))),
                *extra,
            ]
        )
        ns.handler(ns)
        return tmp_path / ("out" + "".join(extra))

    want = policy.model.merge_and_unload() if lora else policy.model
    want = {k: v for k, v in want.state_dict().items()}
    got = AutoModelForImageTextToText.from_pretrained(export(), local_files_only=True).state_dict()
    assert got.keys() == want.keys()
    assert max(float((got[k] - want[k]).abs().max()) for k in want) < 1e-6
    if lora:
        adapter = export("--adapter-only") / "adapter"
        base = TinyPolicy(seed=0, hidden_size=64).model
        merged = PeftModel.from_pretrained(base, adapter).merge_and_unload().state_dict()
        assert max(float((merged[k] - want[k]).abs().max()) for k in want) < 1e-6


# ---------------------------------------------------------------------------------------------- the 7B recipes
RECIPES = {"sft": "configs/sft/qwen2_5_vl_7b.yaml", "grpo": "configs/grpo/qwen2_5_vl_7b.yaml"}


@pytest.fixture(scope="module")
def recipe_dir(tmp_path_factory) -> Path:
    """A working folder laid out as the recipes expect (`data/...` relative to it), plus a tiny real-shaped
    Qwen2.5-VL-7B-like model folder (`model/`)."""
    from conftest import random_episodes

    from geor1.cot.synthesize import synthesize
    from geor1.data.geoworld import build_geoworld
    from geor1.model.real_shaped import save_real_shaped_qwen2_5_vl

    root = tmp_path_factory.mktemp("recipes")
    world = build_geoworld(root / "gw", num_train=48, num_val=8, num_test=2, seed=7)
    random_episodes(world, root / "data" / "cvcities_episodes", splits=("train", "val"))
    synthesize(root / "data" / "cvcities_episodes", root / "data" / "cvcities_sft_pairing", "pairing")
    synthesize(world, root / "data" / "cvcities_sft_geolocate", "geolocate")
    # Every DataLoader reader (rank x worker) gets as many samples as the others, so that the passes are the same
    # length on both ranks and nothing is left unread (uneven readers would also work: the ranks agree to stop
    # together, tests/test_stream_distributed.py): 8 readers for the SFT recipe (4 workers), 4 for GRPO (2 workers);
    # fact-checked exemplars are a random count.
    _keep_first(root / "data" / "cvcities_sft_geolocate", "train", 48)
    _keep_first(root / "data" / "cvcities_sft_pairing", "train", 16)  # + 48 = 64 = 8 readers x 8 samples
    _keep_first(root / "data" / "cvcities_sft_pairing", "val", 0)  # + 8 geolocate
    save_real_shaped_qwen2_5_vl(root / "model")
    return root


def _keep_first(root: Path, split: str, n: int) -> None:
    """Rewrite the shards of `split` in `root` to hold its first `n` samples only (manifest count too)."""
    import io
    import tarfile

    manifest = json.loads((root / "manifest.json").read_text())
    entry = manifest["splits"][split]
    kept: list[str] = []
    for shard in entry["shards"]:
        with tarfile.open(root / shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
        with tarfile.open(root / shard, "w") as tar:
            for m, data in members:
                key = m.name.split(".", 1)[0]
                if key not in kept and len(kept) >= n:
                    continue
                if key not in kept:
                    kept.append(key)
                tar.addfile(m, io.BytesIO(data))
    assert len(kept) == n, (root, split, len(kept))
    entry["samples"] = n
    (root / "manifest.json").write_text(json.dumps(manifest))


def _recipe_fit(root: Path, stage: str, max_steps: int, *extra: str) -> subprocess.CompletedProcess:
    from conftest import REPO

    overrides = [
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "2",
        "--trainer.max_steps",
        str(max_steps),
        "--model.init_args.policy.init_args.path",
        str(root / "model"),
    ]
    if stage == "sft":
        overrides += ["--model.init_args.max_new_tokens", "8", "--model.init_args.max_length", "384"]
    else:
        overrides += ["--model.init_args.rollout.max_new_tokens", "8"]
    return run_cli("fit", "--config", str(REPO / RECIPES[stage]), *overrides, *extra, cwd=root, timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_7b_recipe_on_two_processes_trains_checkpoints_resumes_exports(recipe_dir, stage):
    """The 7B recipe as written (FSDP2Strategy, FSDP2 settings, checkpoints, fit-end export), on 2 CPU
    processes with a real-shaped tiny model: 2 steps, `last.ckpt` (distributed) at the end, resume to step 4, export
    at fit end, and `geor1 model export` of the last checkpoint equal to it. Step 2 is mid-epoch for both recipes
    (SFT: 16 batches of 2 per rank and pass, 4 per optimizer step; GRPO: 24 prompts per rank and pass)."""
    from transformers import AutoModelForImageTextToText

    run = recipe_dir / "runs" / stage / "qwen2_5_vl_7b"
    first = _recipe_fit(recipe_dir, stage, 2)
    assert first.returncode == 0, first.stderr[-4000:]
    last = run / "checkpoints" / "last.ckpt"  # one folder per run: <default_root_dir>/checkpoints
    assert (last / "__0_0.distcp").is_file() and (last / "__1_0.distcp").is_file(), first.stderr[-2000:]
    assert torch.load(last / "meta.pt", weights_only=True)["global_step"] == 2
    resumed = _recipe_fit(recipe_dir, stage, 4, "--ckpt_path", str(last))  # the same run continues in its folder
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    last4 = run / "checkpoints" / "last.ckpt"
    assert torch.load(last4 / "meta.pt", weights_only=True)["global_step"] == 4
    exported = run / "model"  # the recipe's export_dir, written at fit end of the resumed run
    config = run / "tb" / "version_1" / "config.yaml"  # what LightningCLI logged, overrides included
    res = run_cli(
        "model", "export", "--ckpt", str(last4), "--config", str(config), "--out", str(recipe_dir / f"{stage}_offline")
    )
    assert res.returncode == 0, res.stderr[-3000:]
    fit_end = AutoModelForImageTextToText.from_pretrained(exported, local_files_only=True).state_dict()
    offline = AutoModelForImageTextToText.from_pretrained(
        recipe_dir / f"{stage}_offline", local_files_only=True
    ).state_dict()
    initial = AutoModelForImageTextToText.from_pretrained(
        recipe_dir / "model", local_files_only=True, dtype=torch.float32
    ).state_dict()
    assert fit_end.keys() == offline.keys() == initial.keys()
    for k in fit_end:
        assert torch.equal(fit_end[k], offline[k]), k
    if stage == "sft":  # it trained (GRPO's weights may legitimately stay put here: the random tiny model's rewards
        # tie within every group -- zero advantages -- and the policy equals its reference -- zero KL gradient)
        assert any(not torch.equal(fit_end[k].float(), initial[k]) for k in fit_end)


def test_rollout_rng_is_its_own_stream_and_round_trips():
    """Sampling inside `RolloutRNG.sampling` draws from the rank's dedicated generator, leaves the global RNG as it
    was, and a saved state replays the same draws."""
    from geor1.objectives.rollout_rng import RolloutRNG

    cpu = torch.device("cpu")
    torch.manual_seed(3)
    rng = RolloutRNG()
    before = torch.get_rng_state()
    with rng.sampling(cpu):
        first = torch.multinomial(torch.ones(50), 5, replacement=True)  # what HF generate's sampling calls
    assert torch.equal(torch.get_rng_state(), before)  # the global stream did not move
    saved = rng.state_dict(cpu)
    assert saved["world_size"] == 1 and len(saved["rollout"]) == 1
    with rng.sampling(cpu):
        second = torch.multinomial(torch.ones(50), 5, replacement=True)
    assert not torch.equal(first, second)  # the generator advanced
    torch.manual_seed(99)  # a resumed process: another global state
    again = RolloutRNG()
    again.load_state_dict(saved)
    again.apply(cpu)
    assert torch.equal(torch.get_rng_state(), saved["cpu"][0])  # the global RNG of the saved rank too
    with again.sampling(cpu):
        assert torch.equal(torch.multinomial(torch.ones(50), 5, replacement=True), second)


@pytest.mark.parametrize("merge", [True, False])
def test_twin_export_of_a_lora_policy_equals_its_own_save(tmp_path, merge):
    """The writer side of the sharded fit-end export (an unsharded meta-device twin given the gathered weights)
    writes what `Policy.save_pretrained` writes for the same weights: LoRA merged, or the adapter alone."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from geor1.model import LoraSpec, TinyPolicy
    from geor1.model.export import save_hf_folder, unsharded_twin

    policy = TinyPolicy(seed=0, hidden_size=64, lora=LoraSpec(r=4, alpha=8, dropout=0.0))
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a trained adapter (B starts at zero)
    state = {k: v.clone() for k, v in policy.model.state_dict().items()}  # what the gather returns on rank 0
    twin = unsharded_twin(policy)
    twin.load_state_dict(state, strict=True, assign=True)
    save_hf_folder(twin, policy.processor, True, tmp_path / "twin", merge_lora=merge)
    policy.save_pretrained(tmp_path / "own", merge_lora=merge)
    if merge:
        a = AutoModelForImageTextToText.from_pretrained(tmp_path / "twin", local_files_only=True).state_dict()
        b = AutoModelForImageTextToText.from_pretrained(tmp_path / "own", local_files_only=True).state_dict()
        base = TinyPolicy(seed=0, hidden_size=64).model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], base[k]) for k in a)  # the adapter was merged in
    else:
        assert not (tmp_path / "twin" / "config.json").exists()
    a = load_file(tmp_path / "twin" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "own" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0 and all(torch.equal(a[k], b[k]) for k in a)
