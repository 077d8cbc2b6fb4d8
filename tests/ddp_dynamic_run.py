"""Run by tests/test_grpo.py: DAPO dynamic sampling under `strategy: ddp` on 2 CPU processes (gloo), where the ranks
hold different numbers of informative groups, and the plain step on the same groups in 1 process; each writes what
it saw. Not a test module itself (pytest does not collect it)."""

from __future__ import annotations

import json
import os
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader

import geor1  # noqa: F401
from geor1.data.sample import collate_samples
from geor1.data.toy import ToyPairing
from geor1.model import TinyPolicy
from geor1.objectives.grpo import GRPOModule
from geor1.objectives.grpo_settings import LossSettings, RolloutSettings

INFORMATIVE = ["<think>sea to the west</think><answer>A</answer>", "<answer>B</answer>", "B B B"]
FLAT = ["<answer>A</answer>"] * 3
# 2 prompts per rank and batch: rank 0 sees [0, 2] then [4, 6], rank 1 sees
# [1, 3] then [5, 7]. Batch 1: rank 0 has 2 informative groups (enough), rank 1 only 1: nobody steps. Batch 2: rank 0
# has 4, rank 1 has 2: both step, rank 0 on [0, 2] (4 and 6 wait), rank 1 on [1, 5].
TEXTS = {
    0: INFORMATIVE,
    1: INFORMATIVE,
    2: INFORMATIVE[::-1],
    3: FLAT,
    4: INFORMATIVE,
    5: INFORMATIVE[1:] + INFORMATIVE[:1],
    6: INFORMATIVE,
    7: FLAT,
}


class Record(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.steps, self.keys = out, [], []

    def on_train_start(self, trainer, module):
        self.before = [p.detach().clone() for p in module.policy.parameters()]

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps.append(trainer.global_step)
        self.keys.append([s.key for s in batch])

    def on_train_end(self, trainer, module):
        pairs = zip(module.policy.parameters(), self.before, strict=True)
        delta = torch.cat([(p.detach() - b).flatten() for p, b in pairs])
        buffered = getattr(module, "_buffer", [])
        with open(f"{self.out}.rank{trainer.global_rank}.json", "w") as f:
            json.dump(
                {
                    "steps": self.steps,
                    "keys": self.keys,
                    "world": trainer.world_size,
                    "delta_head": delta[:2000].tolist(),
                    "delta_norm": float(delta.norm()),
                    "buffered": [g.sample.key for g in buffered],
                    "buffered_old": [g.old_logprobs is not None for g in buffered],
                },
                f,
            )


def main(out: str, devices: int) -> None:
    L.seed_everything(0)
    data = ToyPairing(8, 2, seed=3, image_size=28)
    # each rank its own prompts (the launcher re-runs this script with LOCAL_RANK set); 1 process: the 4 groups the
    # 2 ranks train on, in one batch
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    order = [rank, rank + 2, rank + 4, rank + 6] if devices == 2 else [0, 2, 1, 5]
    samples = [data[i] for i in order]
    texts = {id(s.prompt): TEXTS[i] for i, s in zip(order, samples, strict=True)}
    module = GRPOModule(
        TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32),
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
        rewards={"accuracy": 1.0},
        log_completions_every_n_steps=0,
        rollout=RolloutSettings(group_size=3, max_new_tokens=8, dynamic_sampling=devices == 2),
        loss=LossSettings(beta=0.0, max_grad_norm=None),
    )

    def generate(prompts, group_size=1, **_):
        from conftest import rollout_from_texts

        return rollout_from_texts(module.policy, prompts, [t for p in prompts for t in texts[id(p)]], group_size)

    module.policy.generate = generate
    loader = DataLoader(samples, batch_size=2 if devices == 2 else 4, collate_fn=collate_samples, shuffle=False)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record(out)],
        use_distributed_sampler=False,
    )
    trainer.fit(module, train_dataloaders=loader)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
