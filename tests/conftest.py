"""Shared fixtures: seeded, offline, CPU. Every test process has Hugging Face offline mode on (import geor1)."""

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
import sitecustomize as _netguard  # noqa: E402,F401  (blocks non-local sockets in this process)

import geor1  # noqa: E402,F401  (sets offline mode before transformers is imported)

REPO = Path(__file__).resolve().parents[1]
NETGUARD = Path(__file__).parent / "netguard"


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
    env = dict(os.environ, GEOR1_LOG_LEVEL="WARNING",
               PYTHONPATH=os.pathsep.join([str(NETGUARD), os.environ.get("PYTHONPATH", "")]))
    cmd = list(args) if args[0] in ("geor1", "lightning") else [sys.executable, "-m", "geor1", *args]
    if cmd[0] in ("geor1", "lightning"):
        cmd[0] = str(Path(sys.executable).parent / cmd[0])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=env)
