"""`PolicyModule`: what every VLM objective shares — the Policy, the optimizer and scheduler from the config,
and export of the trained policy to a plain Hugging Face folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from geor1 import Geor1Error
from geor1.model.export import export_policy
from geor1.model.policy import Policy
from geor1.objectives.scalars import StepScalars
from geor1.objectives.sharding import ShardingSpec, data_parallel_mesh, is_sharded, shard_policy, warn_unused_sharding

log = logging.getLogger(__name__)


def skip_everywhere(trainer: L.Trainer | None, skip: bool, batch_size: int) -> bool:
    """Whether every rank skips this step: True when this rank's batch is unusable (e.g. all its samples were
    corrupt, counted by DataHealth) or, under several processes, when any rank's is.

    Under DDP and FSDP2 each step is a set of collectives, so a rank that skipped a step alone would leave the others
    waiting; the decision is therefore collective, and a rank whose own `batch_size` samples were usable but not
    trained on says so in a warning (never silently).

    >>> skip_everywhere(None, False, 4), skip_everywhere(None, True, 0)
    (False, True)
    """
    if trainer is None or trainer.world_size == 1:
        return skip
    any_skip = bool(trainer.strategy.reduce_boolean_decision(skip, all=False))
    if any_skip and not skip:
        log.warning(
            "step %d skipped on every rank because another rank's batch held no usable sample: %d samples "
            "of rank %d were not trained on",
            trainer.global_step,
            batch_size,
            trainer.global_rank,
        )
    return any_skip


class PolicyModule(StepScalars):
    """Base of the SFT and GRPO modules.

    Args:
        policy: the model to train (`geor1.model.Policy` from a local folder, or `geor1.model.TinyPolicy`).
        optimizer: optimizer over the trainable parameters (`class_path: torch.optim.AdamW` + `init_args`).
        scheduler: optional learning-rate scheduler, stepped every optimizer step.
        export_dir: the trained policy is written there as a Hugging Face folder when `fit` ends; unset under
            `geor1 fit`: `<trainer.default_root_dir>/model` (library callers without it: no export).
        sharding: FSDP2 settings, used under `ModelParallelStrategy` (mixed precision, activation checkpointing,
            resharding, reference offload); single-device and DDP runs ignore them.
    """

    def __init__(
        self,
        policy: Policy,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        scheduler: LRSchedulerCallable | None = None,
        export_dir: str | None = None,
        sharding: ShardingSpec | None = None,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.export_dir = export_dir
        self.sharding = sharding or ShardingSpec()

    def setup(self, stage: str) -> None:
        """`geor1 test|predict` on a training config refuses in one line, pointing at the evaluation configs."""
        if stage in ("test", "predict"):
            raise Geor1Error(
                f"{type(self).__name__} trains; `geor1 {stage}` runs an evaluation config: geor1 {stage} --config "
                "configs/eval/geoworld_tiny.yaml --model.init_args.policy.init_args.path <this run's export_dir> "
                "(configs/eval/ has the benchmarks)"
            )

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.setup("test")

    def predict_step(self, batch: Any, batch_idx: int) -> None:
        self.setup("predict")

    def configure_model(self) -> None:
        """FSDP2: shard the policy per block then at the root, over the data-parallel mesh Lightning gives under
        `ModelParallelStrategy`; a no-op under every other strategy (no device mesh)."""
        mesh = data_parallel_mesh(self.device_mesh)
        if mesh is None:
            warn_unused_sharding(self.sharding)
            return
        if is_sharded(self.policy.model):
            return
        self.shard(mesh)

    def shard(self, mesh) -> None:
        """Shard what this objective trains (subclasses add their frozen models)."""
        shard_policy(self.policy, mesh, self.sharding)

    @property
    def synced_decoding(self) -> bool:
        """Whether `generate` must keep stepping until every rank is done: under sharding every forward is a
        collective, and a rank whose samples all end early would leave the others waiting."""
        return is_sharded(self.policy.model) and self.trainer.world_size > 1

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the policy has no trainable parameters (frozen everything?)")
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        """Export on every rank: under FSDP2 all ranks join the gather of the full weights and rank 0 writes the
        folder; unsharded, rank 0 saves its copy. The others wait until the folder is complete."""
        if not self.export_dir:
            return
        out = export_policy(self.policy, Path(self.export_dir), is_writer=self.trainer.is_global_zero)
        if out is not None:
            log.info("trained policy exported to %s", out)
        self.trainer.strategy.barrier("geor1_export")
