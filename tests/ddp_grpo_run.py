"""Run by tests/test_grpo_ddp.py: one GRPO step with `strategy: ddp` on 2 CPU processes (gloo), and the same step
on 1 process, each writing what it saw. Not a test module itself (pytest does not collect it)."""

from __future__ import annotations

import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

import geor1  # noqa: F401
from geor1.data.sample import ChatSample, Prompt, collate_samples
from geor1.data.toy import ToyPairing
from geor1.model import TinyPolicy
from geor1.objectives.grpo import GRPOModule
from geor1.objectives.grpo_settings import LossSettings, RolloutSettings
from geor1.tasks import GeoTarget, get_task


class Record(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.keys = [s.key for s in batch]
        self.before = [p.detach().clone() for p in module.policy.parameters()]

    def on_train_end(self, trainer, module):
        pairs = zip(module.policy.parameters(), self.before, strict=True)
        delta = torch.cat([(p.detach() - b).flatten() for p, b in pairs])
        with open(f"{self.out}.rank{trainer.global_rank}.json", "w") as f:
            json.dump(
                {
                    "keys": self.keys,
                    "world": trainer.world_size,
                    "delta_norm": float(delta.norm()),
                    "delta_head": delta[:2000].tolist(),
                    "val": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
                },
                f,
            )


COMPLETIONS = ["<think>sea to the west</think><answer>A</answer>", "<think>green</think><answer>B</answer>", "B B B"]


def fixed_rollout(policy, prompts, group_size, **_):
    """The same G completions for every prompt, whatever the RNG: the 1- and 2-process runs see identical data."""
    from conftest import rollout_from_texts

    texts = [COMPLETIONS[j % len(COMPLETIONS)] for _ in prompts for j in range(group_size)]
    return rollout_from_texts(policy, prompts, texts, group_size)


def main(out: str, devices: int) -> None:
    L.seed_everything(0)
    samples = [ToyPairing(4, 2, seed=3)[i] for i in range(4)]
    # each rank takes its own prompts (DistributedSampler via Lightning); its G samples stay on that rank
    loader = DataLoader(samples, batch_size=4 // devices, collate_fn=collate_samples, shuffle=False)
    module = GRPOModule(
        TinyPolicy(seed=0),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
        rewards={"accuracy": 1.0, "format": 1.0},
        log_completions_every_n_steps=0,
        rollout=RolloutSettings(group_size=3, max_new_tokens=8),
        loss=LossSettings(beta=0.0, max_grad_norm=None),
    )
    module.policy.generate = lambda prompts, group_size=1, **kw: fixed_rollout(module.policy, prompts, group_size)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out)],
        use_distributed_sampler=True,
    )
    # validation: under 2 processes rank 0 holds the pairing episode and rank 1 the geolocation sample, so each
    # rank sees one task only; the logged metrics must still be the single process's over both
    image = samples[0].prompt.images[0]
    geo = GeoTarget(lat=48.8566, lon=2.3522, city="Paris", country="FR")
    val = [samples[0], ChatSample("geo", Prompt(get_task("geolocate").prompt(geo), [image]), target=geo)]
    val_loader = DataLoader(val, batch_size=1, collate_fn=collate_samples, shuffle=False)
    trainer.fit(module, train_dataloaders=loader, val_dataloaders=val_loader)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
