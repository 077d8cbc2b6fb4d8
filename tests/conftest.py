"""Shared fixtures: seeded, offline, CPU. Every test process (and the subprocesses tests start, which inherit the
environment) has Hugging Face offline mode on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent / "netguard"))
import sitecustomize as _netguard  # noqa: F401  (blocks non-local sockets in this process)

import geor1

geor1.set_offline_mode()  # before transformers is imported

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).parent / "netguard"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, saying so, where there is no CUDA device (`make test` deselects them anyway)."""
    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(needs_cuda)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def tiny_policy():
    """One tiny Policy for read-only tests (tests that train build their own)."""
    from geor1.model import TinyPolicy

    return TinyPolicy(seed=0)


def random_image(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def run_cli(*args: str, timeout: int = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m geor1 ...` (or a console script when args[0] is one) in a subprocess."""
    env = dict(
        os.environ,
        GEOR1_LOG_LEVEL="WARNING",
        PYTHONPATH=os.pathsep.join([str(NETGUARD), os.environ.get("PYTHONPATH", "")]),
    )
    cmd = list(args) if args[0] in ("geor1", "lightning") else [sys.executable, "-m", "geor1", *args]
    if cmd[0] in ("geor1", "lightning"):
        cmd[0] = str(Path(sys.executable).parent / cmd[0])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=env)


def rollout_from_texts(policy, prompts, texts: list[str], group_size: int):
    """A `Rollout` of chosen completion texts (rows grouped by prompt, each closed by EOS), whatever the RNG: lets a
    test and its reference see identical completions."""
    from geor1.model.policy import Rollout, completion_mask

    inputs = policy.encode(prompts)
    eos = policy.tokenizer.convert_ids_to_tokens(policy.eos_ids[0])
    ids = [policy.tokenizer(t + eos, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(i) for i in ids)
    padded = torch.tensor([i + [policy.pad_id] * (width - len(i)) for i in ids])
    mask, truncated = completion_mask(padded, policy.eos_ids)
    return Rollout(inputs, padded, mask, texts, group_size, truncated)


def random_episodes(world: Path, out: Path, splits: tuple[str, ...] = ("train",)) -> Path:
    """K=2 pairing episodes of a GeoWorld folder with negatives drawn at random (an index of random vectors): tiny
    GRPO data for tests."""
    import json

    from geor1.data.reader import iter_raw_samples, split_shards
    from geor1.retrieval.index import IndexSpec, SatIndex
    from geor1.retrieval.mining import Miner, MiningSpec, write_episodes

    meta = [
        dict(json.loads(r["json"]), key=r["__key__"])
        for split in ("train", "val", "test")
        for r in iter_raw_samples(split_shards(world, split))
    ]
    vecs = np.random.default_rng(0).normal(size=(len(meta), 8)).astype(np.float32)
    index = SatIndex.build(vecs, vecs, [{k: m[k] for k in ("key", "lat", "lon", "split")} for m in meta], IndexSpec())
    miner = Miner(index, MiningSpec(k=2, strategy="random", min_km=0.0, splits=splits))
    episodes, _ = miner.mine()
    write_episodes(miner, episodes, world, out)
    return out
