"""`ContrastiveModule`: the cross-view encoder behind hard-negative mining and retrieval benchmarks.

Ground and satellite images go through timm backbones (shared or separate weights, created offline with
`pretrained=False` or loaded from a local checkpoint file), a linear projection and L2 normalisation; the loss is the
symmetric InfoNCE over in-batch negatives with a learnable temperature (CLIP-style logit scale, clamped at 100).
Batches come from `PairShardDataModule(item="tensors")`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from geor1 import Geor1Error
from geor1.data.datamodule import normalise
from geor1.metrics.retrieval import CrossViewRecall
from geor1.objectives.base import skip_everywhere
from geor1.objectives.memory import log_peak_memory
from geor1.objectives.scalars import StepScalars
from geor1.objectives.sharding import (
    ShardingSpec,
    data_parallel_mesh,
    is_sharded,
    shard_modules,
    timm_blocks,
    warn_unused_sharding,
)

log = logging.getLogger(__name__)


def make_backbone(name: str, checkpoint: str | None) -> nn.Module:
    """A timm backbone without classifier head; weights from a local file (safetensors or a plain state dict
    loaded with weights_only=True), never from a hub."""
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as e:
        raise Geor1Error(f"unknown timm backbone {name!r}: {e}") from None
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise Geor1Error(f"backbone checkpoint '{path}' does not exist (geor1 never downloads weights)")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
            state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
        missing, unexpected = model.load_state_dict(state, strict=False)
        log.info("backbone %s from %s (%d missing, %d unexpected keys)", name, path, len(missing), len(unexpected))
    return model


def info_nce(ground: Tensor, sat: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE. ground, sat: [B, D] L2-normalised, row i of each the same place -> scalar loss."""
    logits = logit_scale * ground @ sat.T  # [B, B]
    target = torch.arange(len(ground), device=ground.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class CrossViewEncoder(nn.Module):
    """Ground and satellite towers -> L2-normalised embeddings."""

    def __init__(self, backbone: str, embed_dim: int, shared: bool, checkpoint: str | None) -> None:
        super().__init__()
        self.ground = make_backbone(backbone, checkpoint)
        self.sat = self.ground if shared else make_backbone(backbone, checkpoint)
        timm_model: Any = self.ground  # timm models share `num_features`, though no base class declares it
        width = int(timm_model.num_features)
        self.ground_proj = nn.Linear(width, embed_dim)
        self.sat_proj = nn.Linear(width, embed_dim)

    def embed_ground(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] normalised float -> [B, D] unit vectors."""
        return F.normalize(self.ground_proj(self.ground(images)), dim=-1)

    def embed_sat(self, images: Tensor) -> Tensor:
        return F.normalize(self.sat_proj(self.sat(images)), dim=-1)


class ContrastiveModule(StepScalars):
    """Cross-view contrastive training.

    Args:
        backbone: timm model name (random init unless `backbone_checkpoint` is given).
        embed_dim: embedding size (the FAISS index dimension).
        shared: one backbone for both views (separate projections) instead of two.
        backbone_checkpoint: local weights file for the backbone(s) (safetensors or a torch state dict).
        temperature: initial softmax temperature (learned).
        optimizer: optimizer factory.
        scheduler: optional LR scheduler factory.
        sharding: FSDP2 settings under `ModelParallelStrategy` (stages / blocks of each backbone, then each tower,
            then the whole module); ignored by single-device and DDP runs.
    """

    def __init__(
        self,
        backbone: str = "regnetx_002",
        embed_dim: int = 128,
        shared: bool = False,
        backbone_checkpoint: str | None = None,
        temperature: float = 0.07,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        sharding: ShardingSpec | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "sharding"])
        self.sharding = sharding or ShardingSpec()
        self.encoder = CrossViewEncoder(backbone, embed_dim, shared, backbone_checkpoint)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.val_recall = CrossViewRecall()
        self._register_load_state_dict_pre_hook(self._scale_shape)

    def _scale_shape(self, state_dict: dict, prefix: str, *args) -> None:
        """A logit scale saved as [] (one process) or [1] (FSDP2) loads into either."""
        key = prefix + "logit_scale"
        value = state_dict.get(key)
        if isinstance(value, Tensor) and type(value) is Tensor and value.numel() == 1:
            state_dict[key] = value.reshape(self.logit_scale.shape)

    def embed(self, batch: dict) -> tuple[Tensor, Tensor]:
        """A `collate_tensors` batch (uint8 images) -> (ground [B, D], sat [B, D]) embeddings."""
        return (self.encoder.embed_ground(normalise(batch["ground"])), self.encoder.embed_sat(normalise(batch["sat"])))

    def forward(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """(ground [B, D], sat [B, D], logit scale) of a batch: everything the loss needs, in one forward, so that
        FSDP2 gathers the module's own parameters (projections, logit scale) around it."""
        ground, sat = self.embed(batch)
        return ground, sat, self.logit_scale.exp().clamp(max=100.0).reshape(())

    def training_step(self, batch: dict, batch_idx: int) -> Tensor | None:
        bs = len(batch["key"])
        if skip_everywhere(self._trainer, bs < 2, bs):
            return None  # a batch of skipped samples only, or a single pair: no negatives
        ground, sat, scale = self(batch)
        loss = info_nce(ground, sat, scale)
        log_peak_memory(self, batch_size=bs)
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/temperature", 1.0 / scale, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not batch["key"]:
            return
        ground, sat, scale = self(batch)
        self.val_recall.update(ground, sat)
        self.log("val/loss", info_nce(ground, sat, scale), batch_size=len(batch["key"]), sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_recall.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "recall@1")
        self.val_recall.reset()

    def configure_model(self) -> None:
        """FSDP2 under `ModelParallelStrategy`: each backbone stage / block, each backbone, then the module itself
        (projections and the logit scale); a no-op under every other strategy."""
        mesh = data_parallel_mesh(self.device_mesh)
        if mesh is None:
            warn_unused_sharding(self.sharding)
            return
        if is_sharded(self):
            return
        backbones = list({id(b): b for b in (self.encoder.ground, self.encoder.sat)}.values())  # shared: one
        if self.sharding.activation_checkpointing:
            for b in backbones:
                timm_model: Any = b  # every timm model has set_grad_checkpointing (no base class declares it)
                timm_model.set_grad_checkpointing(True)
        blocks = [blk for b in backbones for blk in timm_blocks(b)]
        # fully_shard takes no 0-d parameters: the scale becomes [1] (checkpoints load either way, see below)
        self.logit_scale = nn.Parameter(self.logit_scale.detach().reshape(1))
        shard_modules(backbones + [self], blocks, mesh, self.sharding)

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "step"},
        }
