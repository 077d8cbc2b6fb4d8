"""Each rank's own sampling generator, saved per rank in checkpoints, so a resumed run samples what the
uninterrupted run would have sampled — on one process, under DDP and under FSDP2 (`ModelParallelStrategy`).

Hugging Face `generate` samples from the *global* generator of the device the model is on (CUDA's on a GPU, the CPU
one on CPU). Rollouts therefore run inside `torch.random.fork_rng`: the device's global state is set from this
rank's dedicated `torch.Generator`, sampling runs, and the advanced state goes back into the generator; the global
RNG outside the rollout is left as it was.

Lightning's distributed checkpoint (`ModelParallelStrategy`) writes the non-tensor part of the checkpoint
(`meta.pt`) from rank 0 only, and `DDPStrategy` writes the whole file from rank 0 only. So every rank's states are
gathered (`all_gather_object`, a collective: every rank saves together) into one list indexed by rank, and each
rank picks its own entry on load.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_RANK_STRIDE = 1_000_003  # rank r's generator starts from seed + r * stride: distinct streams per rank


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def get_device_rng_state(device: torch.device) -> Tensor:
    """The global RNG state of `device` (CPU ByteTensor)."""
    if device.type == "cpu":
        return torch.get_rng_state()
    return torch.get_device_module(device.type).get_rng_state(device)


def set_device_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cpu":
        torch.set_rng_state(state)
    else:
        torch.get_device_module(device.type).set_rng_state(state, device)


class RolloutRNG:
    """This rank's dedicated sampling generator (on the rollout device) and the pending states of a resume."""

    def __init__(self) -> None:
        self.generator: torch.Generator | None = None
        self._pending: dict[str, Tensor | None] | None = None

    def get(self, device: torch.device) -> torch.Generator:
        """The generator on `device`, created on first use from `torch.initial_seed()` and this rank
        (`seed_everything` makes the initial seed the same on every rank; the rank offset makes the streams differ)."""
        if self.generator is None or self.generator.device.type != device.type:
            rank, _ = _dist_rank_world()
            gen = torch.Generator(device=device)
            gen.manual_seed((torch.initial_seed() + rank * _RANK_STRIDE) % 2**63)
            if self.generator is not None:  # the module moved device: keep the stream
                gen.set_state(self.generator.get_state())
            self.generator = gen
        return self.generator

    @contextmanager
    def sampling(self, device: torch.device) -> Iterator[None]:
        """Run the block (a rollout) on `device`'s global RNG set from this rank's generator; then store the advanced
        state back in the generator and restore the global RNG outside the block."""
        gen = self.get(device)
        accel = [] if device.type == "cpu" else [device]
        with torch.random.fork_rng(devices=accel, device_type="cuda" if device.type == "cpu" else device.type):
            set_device_rng_state(device, gen.get_state())
            yield
            gen.set_state(get_device_rng_state(device))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, device: torch.device) -> dict[str, Any]:
        """Every rank's states, gathered: {"world_size": W, "rollout": [W states], "cpu": [W], "device": [W]}.

        A collective when the process group is up: every rank must call it (Lightning builds the checkpoint on
        every rank, then one rank writes the non-tensor part)."""
        mine = {
            "rollout": self.get(device).get_state(),
            "cpu": torch.get_rng_state(),
            "device": None if device.type == "cpu" else get_device_rng_state(device),
        }
        _, world = _dist_rank_world()
        states: list[Any] = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(states, mine)
        else:
            states = [mine]
        return {"world_size": world, **{k: [s[k] for s in states] for k in ("rollout", "cpu", "device")}}

    def load_state_dict(self, saved: dict[str, Any] | Tensor | None) -> None:
        """Keep this rank's entry of a saved `state_dict()` until `apply` (the device is known by then).
        A bare tensor is the older single-process format (the CPU global state)."""
        if saved is None:
            return
        if isinstance(saved, Tensor):
            self._pending = {"rollout": None, "cpu": saved, "device": None}
            return
        rank, world = _dist_rank_world()
        saved_world = int(saved["world_size"])
        if saved_world != world:
            log.warning(
                "the checkpoint's sampling generators are from %d ranks, this run has %d: sampling is not "
                "the uninterrupted run's (ranks beyond %d start fresh streams)",
                saved_world,
                world,
                saved_world,
            )
        if rank >= saved_world:
            return
        self._pending = {k: saved[k][rank] for k in ("rollout", "cpu", "device")}

    def apply(self, device: torch.device) -> None:
        """Restore the pending states (after a resume): this rank's generator and its global RNGs."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        if pending["rollout"] is not None:
            self.get(device).set_state(pending["rollout"])
        cpu = pending["cpu"]
        if cpu is None:  # every saved state holds one (state_dict, and the older bare-tensor format)
            raise ValueError("the checkpoint's rollout RNG state has no CPU generator state")
        torch.set_rng_state(cpu)
        if pending["device"] is not None and device.type != "cpu":
            set_device_rng_state(device, pending["device"])
