"""FSDP2 sharding of a policy or an encoder, applied in `configure_model` under Lightning's `ModelParallelStrategy`.

Every decoder layer and every vision block becomes its own `fully_shard` unit (the architecture adapter names them),
then the root (the transformers / PEFT model: embeddings, final norm, LM head and whatever is left). Under any other
strategy (single device, DDP) nothing happens: `data_parallel_mesh` returns None.

The LM head stays in the root unit, whose parameters FSDP2 keeps gathered from the root's forward to the end of
backward (the root's reshard_after_forward is left to FSDP2's default for roots, False), and after a no-grad forward
until `reshard()`. geor1 runs the head on tiles of hidden states outside the transformers forward
(`geor1.model.logprobs`): that is exact under FSDP2 only because every head call comes after a forward of the root
model in the same pass. A head of its own unit would instead issue one all-gather / reduce-scatter per tile, and
ranks with different completion lengths (different tile counts) would mismatch their collectives.
tests/test_fsdp.py compares a GRPO step (every log-prob pass) on 2 processes with 1, and runs ranks of different
completion lengths.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from geor1 import Geor1Error

if TYPE_CHECKING:
    from torch.distributed.fsdp import FSDPModule

    from geor1.model.policy import Policy

log = logging.getLogger(__name__)


@dataclass
class ShardingSpec:
    """FSDP2 settings (used only under `ModelParallelStrategy`; ignored by single-device and DDP runs).

    Args:
        mixed_precision: compute in bf16 (parameters all-gathered as bf16) with fp32 gradient reduction; the sharded
            master weights and the optimizer stay in the parameters' own dtype.
        activation_checkpointing: recompute each decoder layer / vision block in backward (the model family's own
            per-block checkpointing: transformers' gradient checkpointing, timm's `set_grad_checkpointing`).
        reshard_after_forward: free each block's gathered parameters after its forward (ZeRO-3); False keeps them
            until backward (ZeRO-2-like: faster, more memory).
        offload_reference: keep the GRPO reference model's shards in CPU memory (full fine-tuning with beta > 0);
            gathered to the device layer by layer for its forward.
    """

    mixed_precision: bool = False
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    offload_reference: bool = False


class FSDP2Strategy(ModelParallelStrategy):
    """Lightning's `ModelParallelStrategy` with every process in one data-parallel group, the shape geor1 shards over.

    Lightning's own default (`data_parallel_size: auto` = the number of nodes, `tensor_parallel_size: auto` = the
    devices per node) would make the devices of a node a tensor-parallel dimension, which geor1 does not use (and
    `data_parallel_mesh` refuses); with this strategy, changing `trainer.devices` or `trainer.num_nodes` is all a
    launch needs.

    Args:
        save_distributed_checkpoint: each rank writes its shard of weights and optimizer (a checkpoint folder);
            False gathers everything into one file on rank 0.
        process_group_backend: "nccl" on GPUs, "gloo" on CPU; None picks from the accelerator.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, process_group_backend: str | None = None) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # the whole world, known before the mesh
        self._tensor_parallel_size = 1
        super().setup_environment()


def data_parallel_mesh(mesh):
    """The 1-D mesh FSDP2 shards over, from the LightningModule's `device_mesh` (None: not sharded -> None).

    geor1 shards over data parallelism only; a tensor-parallel dimension > 1 would make ranks see the same data
    (Lightning's `ModelParallelStrategy` defaults to tensor_parallel_size = devices), so it is refused."""
    if mesh is None:
        return None
    names = mesh.mesh_dim_names or ()
    if "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise Geor1Error(
            f"geor1 shards with FSDP2 over data parallelism only, but the device mesh has tensor_parallel size "
            f"{mesh['tensor_parallel'].size()}: use the strategy geor1.objectives.sharding.FSDP2Strategy, or "
            f"ModelParallelStrategy with data_parallel_size={mesh.size()} (num_nodes * devices) and "
            f"tensor_parallel_size=1"
        )
    return mesh["data_parallel"] if "data_parallel" in names else mesh


def warn_unused_sharding(spec: ShardingSpec) -> None:
    """Say so when FSDP2 settings were given but the strategy does not shard (one device, DDP): mixed precision and
    activation checkpointing would otherwise be silently off."""
    if spec != ShardingSpec():
        log.warning(
            "sharding settings %s are ignored: the strategy is not FSDP2 (use "
            "geor1.objectives.sharding.FSDP2Strategy); on one device or under DDP use trainer.precision and "
            "the policy's gradient_checkpointing instead",
            spec,
        )


def is_sharded(module: nn.Module) -> TypeGuard[FSDPModule]:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def _fsdp_kwargs(mesh, spec: ShardingSpec, offload: bool = False) -> dict:
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy

    kw: dict = {"mesh": mesh, "reshard_after_forward": spec.reshard_after_forward}
    if spec.mixed_precision:
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if offload:
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())  # pinning needs CUDA
    return kw


def policy_blocks(model: nn.Module) -> list[nn.Module]:
    """Decoder layers then vision blocks of a transformers VLM (under no PEFT wrapper), from its architecture
    adapter; for a family with none, from the model's `_no_split_modules` classes."""
    try:
        from geor1.model.adapters import adapter_for

        adapter = adapter_for(model)
    except (ImportError, Geor1Error):
        adapter = None
    if adapter is not None:
        return list(adapter.decoder_layers(model)) + list(adapter.vision_blocks(model))
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise Geor1Error(
            f"cannot find the blocks of {type(model).__name__} to shard (no adapter, no _no_split_modules)"
        )
    return blocks


def shard_policy(policy: Policy, mesh, spec: ShardingSpec, offload: bool = False) -> None:
    """`fully_shard` every block of `policy` (a `geor1.model.Policy`), then its root model, in place.

    Also marks the transformers model as FSDP-managed so that `generate` keeps decoding on a rank whose samples
    are all done until every rank is (`synced_gpus`): under sharding every forward is a collective."""
    from torch.distributed.fsdp import fully_shard

    base: Any = policy.base_model()  # a transformers PreTrainedModel
    if spec.activation_checkpointing and not _checkpointing(base):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    kw = _fsdp_kwargs(mesh, spec, offload)
    blocks = policy_blocks(base)
    for block in blocks:
        fully_shard(block, **kw)
    # the root (embeddings, final norm, LM head): FSDP2's root default keeps it gathered from forward to backward
    fully_shard(policy.model, **{k: v for k, v in kw.items() if k != "reshard_after_forward"})
    for m in {id(base): base, id(policy.model): policy.model}.values():
        m._is_fsdp_managed_module = True  # transformers: generate(synced_gpus=None) -> synced when world > 1
    log.info(
        "FSDP2: %d blocks + root of %s sharded over %d ranks (mixed precision %s, offload %s)",
        len(blocks),
        type(base).__name__,
        mesh.size(),
        spec.mixed_precision,
        offload,
    )


def _checkpointing(model: nn.Module) -> bool:
    """Whether transformers' per-layer activation checkpointing is on (its attribute's name changed in v5)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or hasattr(model, name):
            return bool(getattr(model, name))
    return False


def timm_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated stages / blocks of a timm backbone (FSDP2 units): `blocks` (ViT-like) or `stages` (CNNs)."""
    for name in ("blocks", "stages", "layers"):
        seq = getattr(model, name, None)
        if isinstance(seq, (nn.Sequential, nn.ModuleList)) and len(seq):
            return list(seq)
    return []


def shard_modules(roots: list[nn.Module], blocks: list[nn.Module], mesh, spec: ShardingSpec) -> None:
    """`fully_shard` each of `blocks`, then each of `roots` (modules that are not already units), in place."""
    from torch.distributed.fsdp import fully_shard

    kw = _fsdp_kwargs(mesh, spec)
    for block in blocks:
        fully_shard(block, **kw)
    for root in roots:
        fully_shard(root, **kw)


def reshard(module: nn.Module | None) -> None:
    """Free the gathered parameters a sharded root keeps after a no-grad forward (its reshard_after_forward is
    False); a no-op on modules that are not sharded."""
    if module is not None and is_sharded(module):
        module.reshard()
