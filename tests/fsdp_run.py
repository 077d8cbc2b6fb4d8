"""Run by tests/test_fsdp.py: one SFT or GRPO step under `ModelParallelStrategy` (FSDP2, `fully_shard` per block
in `configure_model`) on 2 CPU processes (gloo), or the same step on 1 process; each rank writes what it saw, and
rank 0 the full updated weights (gathered collectively on every rank). Not a test module (pytest does not collect
it).

    python tests/fsdp_run.py OUT DEVICES MODES
    MODES: comma-separated sft | grpo | grpo_ddp | grpo_lora | grpo_uneven | rollout | contrastive
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import lightning as L
import torch
from conftest import rollout_from_texts
from safetensors.torch import save_file
from torch.utils.data import DataLoader

import geor1  # noqa: F401
from geor1.data.sample import collate_samples
from geor1.data.toy import ToyPairing
from geor1.model import LoraSpec, TinyPolicy
from geor1.objectives.contrastive import ContrastiveModule, info_nce
from geor1.objectives.grpo import GRPOModule
from geor1.objectives.grpo_settings import LossSettings, RolloutSettings
from geor1.objectives.sft import SFTModule
from geor1.objectives.sharding import FSDP2Strategy, ShardingSpec, _checkpointing, is_sharded

N_PROMPTS = 4
COMPLETIONS = [
    "<think>sea to the west</think><answer>A</answer>",
    "<think>green</think><answer>B</answer>",
    "B B B",
    "<answer>A</answer>",
]


def full_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of a plain or FSDP2 module; collective under FSDP2 (call on every rank)."""
    if is_sharded(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Record(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = out
        self.losses: list[float] = []
        self.lengths: list[list[int]] = []
        self.grad_norms: list[float] = []
        self.prompt_images: list[int] = []  # images in each rollout's prompts
        self.grad_images: list[int] = []  # images the vision tower encoded in each differentiable forward

    def on_before_optimizer_step(self, trainer, module, optimizer):
        # after clipping: the norm of the whole (all ranks') gradient
        grads = [p.grad for p in module.policy.parameters() if p.grad is not None]
        full = [g.full_tensor() if hasattr(g, "full_tensor") else g for g in grads]  # collective under FSDP2
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in full]))))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(trainer.callback_metrics["train/loss"]))

    def on_train_end(self, trainer, module):
        state = full_state(module.policy.model)  # every rank joins the gather
        info = {
            "world": trainer.world_size,
            "keys": getattr(self, "keys", []),
            "losses": self.losses,
            "lengths": self.lengths,
            "grad_norms": self.grad_norms,
            "prompt_images": self.prompt_images,
            "grad_images": self.grad_images,
            "sharded": is_sharded(module.policy.model),
            "checkpointing": _checkpointing(module.policy.base_model()),
            "has_ref": getattr(module, "_reference", None) is not None,
            "ref_sharded": module._reference is not None and is_sharded(module._reference.model)
            if isinstance(module, GRPOModule)
            else None,
        }
        with open(f"{self.out}.rank{trainer.global_rank}.json", "w") as f:
            json.dump(info, f)
        if trainer.global_rank == 0:
            save_file({k: v.contiguous() for k, v in state.items()}, f"{self.out}.weights.safetensors")

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.keys = [s.key for s in batch]


def fixed_rollout(policy, prompts, group_size, **_):
    """Completions fixed by each prompt (different lengths per prompt, so that the ranks hold different token
    counts), whatever the RNG: the 1- and 2-process runs see identical data."""
    index = [p.images[-1].size[1] // 14 - 2 for p in prompts]  # prompt i's tiles are (28 + 14 i) px
    texts = [COMPLETIONS[(i + min(j, 1)) % len(COMPLETIONS)] for i in index for j in range(group_size)]
    return rollout_from_texts(policy, prompts, texts, group_size)


def samples(mode: str) -> list:
    data = [ToyPairing(N_PROMPTS, 2, seed=3, image_size=28 + 14 * i)[i] for i in range(N_PROMPTS)]
    if mode == "sft":  # responses of different token counts: rank 0 (samples 0, 3) holds more labelled tokens
        data = [
            dataclasses.replace(
                s, response="<think>" + "sea " * (3 * i * i) + f"</think><answer>{s.target.letter}</answer>"
            )
            for i, s in enumerate(data)
        ]
    return data


def force_eos(policy, rank: int) -> None:
    """Rank 0: every sample ends at its first token (EOS forced); other ranks: EOS never sampled (length limit)."""
    head = policy.base_model().lm_head
    eos = policy.eos_ids

    def hook(_module, _inputs, logits):
        logits = logits.clone()
        if rank == 0:
            logits[..., eos[0]] = 1e4
        else:
            logits[..., eos] = -1e4
        return logits

    head.register_forward_hook(hook)


class HalvesContrastive(ContrastiveModule):
    """1-process reference of a 2-rank contrastive step: each half of the batch is one rank's (its own in-batch
    negatives and batch-norm statistics), and the ranks' gradients are averaged."""

    def training_step(self, batch: dict, batch_idx: int):
        halves = [{k: v[i : i + 2] for k, v in batch.items()} for i in (0, 2)]
        losses = [info_nce(*self(h)) for h in halves]
        for r, loss in enumerate(losses):
            self.losses[r] = float(loss)
        loss = sum(losses) / 2
        self.log("train/loss", loss)
        return loss


def contrastive(out: str, devices: int) -> None:
    """One contrastive step; rank r takes pairs 2r, 2r+1 (one process: all 4, as two halves)."""
    gen = torch.Generator().manual_seed(0)
    pairs = [
        {
            "key": f"p{i}",
            "ground": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=gen),
            "sat": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=gen),
        }
        for i in range(4)
    ]
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    mine = pairs if devices == 1 else pairs[2 * rank : 2 * rank + 2]
    collate = lambda b: {
        "key": [x["key"] for x in b],
        "ground": torch.stack([x["ground"] for x in b]),
        "sat": torch.stack([x["sat"] for x in b]),
    }
    loader = DataLoader(mine, batch_size=len(mine), collate_fn=collate)
    cls = HalvesContrastive if devices == 1 else ContrastiveModule
    module = cls(
        backbone="regnetx_002", embed_dim=16, optimizer=lambda p: torch.optim.SGD(p, lr=0.05), sharding=ShardingSpec()
    )
    module.losses = {}
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    strategy = FSDP2Strategy() if devices > 1 else "auto"
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    names = set(before)
    state = {k: v for k, v in full_state(module).items() if k in names}  # parameters (ranks keep own BN stats)
    loss = float(trainer.callback_metrics["train/loss"])
    with open(f"{out}.rank{trainer.global_rank}.json", "w") as f:
        json.dump(
            {
                "world": trainer.world_size,
                "sharded": is_sharded(module),
                "losses": [loss],
                "halves": [module.losses.get(0), module.losses.get(1)],
            },
            f,
        )
    if trainer.global_rank == 0:
        save_file({k: v.contiguous() for k, v in state.items()}, f"{out}.weights.safetensors")
        save_file({k: v.contiguous() for k, v in before.items()}, f"{out}.before.safetensors")


def main(out: str, devices: int, mode: str) -> None:
    L.seed_everything(0)
    if mode == "contrastive":
        return contrastive(out, devices)
    lora = LoraSpec(r=4, alpha=8, dropout=0.0) if mode == "grpo_lora" else None
    policy = TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32, lora=lora)
    # 2 processes recompute every block in backward (activation checkpointing): the same values as 1 process without
    # (and the GRPO reference's shards live in CPU memory); rollout: bf16 compute, fp32 gradient reduction
    spec = ShardingSpec(
        activation_checkpointing=devices > 1, offload_reference=devices > 1, mixed_precision=mode == "rollout"
    )
    record = Record(out)
    if mode == "sft":
        module = SFTModule(
            policy, optimizer=lambda p: torch.optim.SGD(p, lr=0.5), max_length=512, num_val_generations=0, sharding=spec
        )
    else:
        # grpo_uneven: rank 0 holds 3 prompts and rank 1 one, in micro-batches of 1 prompt (3 backward passes
        # against 1: rank 1 adds zero-weight passes), aggregated per sequence over all ranks' rows
        uneven = mode == "grpo_uneven"
        module = GRPOModule(
            policy,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
            rewards={"accuracy": 1.0, "format": 1.0},
            rollout=RolloutSettings(group_size=3, max_new_tokens=12),
            loss=LossSettings(
                beta=0.1,
                mu=1 if uneven else 2,
                aggregation="grpo" if uneven else "dapo",
                max_grad_norm=None if uneven else 0.05,
                micro_batch_prompts=1 if uneven else None,
            ),
            log_completions_every_n_steps=0,
            sharding=spec,
        )
        if mode == "rollout":
            force_eos(policy, int(os.environ.get("LOCAL_RANK", "0")))
            sample = policy.generate
        else:

            def sample(prompts, group_size=1, **kw):
                return fixed_rollout(policy, prompts, group_size)

        def generate(*args, **kw):
            rollout = sample(*args, **kw)
            record.lengths.append(rollout.lengths.tolist())
            record.prompt_images.append(int(rollout.inputs["image_grid_thw"].shape[0]))
            return rollout

        def count_images(_module, args, kwargs):
            # the forward passes that build the graph, not their recomputation in backward (checkpointing)
            if torch.is_grad_enabled() and torch._C._current_graph_task_id() == -1:
                grid = kwargs["grid_thw"] if "grid_thw" in kwargs else args[1]
                record.grad_images.append(int(grid.shape[0]))

        policy.generate = generate
        policy.vision_tower(policy.model).register_forward_pre_hook(count_images, with_kwargs=True)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # the weights before the step, unsharded
        save_file(
            {k: v.detach().contiguous() for k, v in policy.model.state_dict().items()}, f"{out}.before.safetensors"
        )
    data, per_rank, split = samples(mode), N_PROMPTS // devices, True
    if mode == "grpo_uneven" and devices > 1:  # rank 0: prompts 0-2, rank 1: prompt 3
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        data, per_rank, split = (data[:3], 3, False) if rank == 0 else (data[3:], 1, False)
    loader = DataLoader(data, batch_size=per_rank, collate_fn=collate_samples, shuffle=False)
    strategy = FSDP2Strategy() if devices > 1 else "auto"
    if mode == "grpo_ddp":  # the same GRPO step under DDP (dapo's token count all-reduced there too)
        strategy = "ddp" if devices > 1 else "auto"
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        devices=devices,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
        use_distributed_sampler=split,
    )
    trainer.fit(module, train_dataloaders=loader)


if __name__ == "__main__":
    for run_mode in sys.argv[3].split(","):  # one process group, one Trainer per mode
        main(f"{sys.argv[1]}.{run_mode}", int(sys.argv[2]), run_mode)
