"""Turning a trained policy or a checkpoint into a plain Hugging Face folder.

    export_policy(policy, out, is_writer)      at the end of `fit`: under FSDP2 every rank joins the gather of the
                                               full state dict, the writer (rank 0) saves it; else a plain save
    export_checkpoint(ckpt, config, out)       `geor1 model export`: one process, offline, from a distributed
                                               checkpoint folder or a single-file `.ckpt`, into the policy the
                                               run's config builds (config None: the config.yaml LightningCLI
                                               saved for the run, found next to the checkpoint)

The folder loads with `transformers.AutoModelForImageTextToText.from_pretrained` (LoRA merged into the weights), or
holds the adapter alone (`merge_lora=False`: `<out>/adapter`, for `peft.PeftModel.from_pretrained`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from geor1 import Geor1Error

if TYPE_CHECKING:
    from geor1.model.policy import Policy

log = logging.getLogger(__name__)

PREFIX = "policy."  # where the Policy sits in the LightningModule's state dict (`PolicyModule.policy`)
_DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of a distributed checkpoint folder
_LIGHTNING_METADATA = "meta.pt"  # Lightning's non-tensor part of a distributed checkpoint (rank 0 writes it)


# ---------------------------------------------------------------------------------------------- fit-end export
def is_distributed_module(module: nn.Module) -> bool:
    """True if any parameter of `module` is a DTensor (FSDP2 / tensor parallel): its full weights live on no rank."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def gather_full_state_dict(model: nn.Module) -> dict[str, Any]:
    """The full (unsharded) state dict of a sharded `model`, on CPU, on rank 0 (empty on the other ranks).

    A collective: every rank must call it, or the ranks that did wait forever."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # full_state_dict=True: plain tensors (the declared value type also allows DTensor / ShardedTensor)
    return dict(get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))


def export_policy(policy: Policy, out: str | Path, is_writer: bool = True, merge_lora: bool = True) -> Path | None:
    """Write `policy` (a `geor1.model.Policy`) as a Hugging Face folder -> the folder on the writer, else None.

    Sharded (FSDP2): call on every rank; each joins the gather, the writer alone builds an unsharded copy on the
    CPU (weights assigned from the gathered state dict, no second copy) and saves it. Not sharded: the writer saves
    the policy itself, the other ranks do nothing.
    """
    out = Path(out)
    if not is_distributed_module(policy.model):
        return policy.save_pretrained(out, merge_lora=merge_lora) if is_writer else None
    state = gather_full_state_dict(policy.model)  # [every rank] -> full tensors on rank 0 only
    if not is_writer:
        return None
    twin = unsharded_twin(policy)
    twin.load_state_dict(state, strict=True, assign=True)
    return save_hf_folder(twin, policy.processor, policy.lora is not None, out, merge_lora)


def unsharded_twin(policy: Policy) -> nn.Module:
    """A model of the same architecture as `policy.model` (the PEFT wrapper included) with its weights on the meta
    device: `load_state_dict(..., assign=True)` then gives it real tensors without allocating them twice."""
    base: Any = policy.base_model()  # a transformers PreTrainedModel
    with torch.device("meta"):
        twin = type(base)._from_config(base.config, dtype=base.dtype)
    if policy.lora is not None:
        from peft import get_peft_model

        peft_model: Any = policy.model  # a peft PeftModel
        twin = get_peft_model(twin, peft_model.peft_config["default"])
    return twin.eval()


def save_hf_folder(model: Any, processor: Any, is_lora: bool, out: Path, merge_lora: bool) -> Path:
    """`Policy.save_pretrained`'s layout for any model: the merged weights and the processor in `out`, and with
    LoRA the adapter in `out/adapter` (only it, with the processor, when not `merge_lora`). `model`: a transformers
    PreTrainedModel, or a peft PeftModel when `is_lora`."""
    out.mkdir(parents=True, exist_ok=True)
    if is_lora:
        model.save_pretrained(out / "adapter")
        if not merge_lora:
            processor.save_pretrained(out / "adapter")
            return out
        model = model.merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out


# ---------------------------------------------------------------------------------------------- offline export
CONFIG_NAME = "config.yaml"  # what LightningCLI's SaveConfigCallback writes into the run's log folder


class CheckpointMismatch(Geor1Error):
    """The checkpoint's tensors do not fit the policy a config builds."""


def run_configs(ckpt: str | Path) -> list[Path]:
    """The config.yaml files LightningCLI saved for the run that wrote `ckpt`, best guess first: looked for in the
    checkpoint's folder and up to two folders above it, in each as `config.yaml` and as `*/version_*/config.yaml` /
    `version_*/config.yaml` (a logger's version folders), the nearest folder that holds any winning. Among several
    (one per launch of a resumed run), the newest written no later than the checkpoint comes first."""
    path = Path(ckpt).resolve()
    folder = path.parent
    for _ in range(3):
        found = [folder / CONFIG_NAME] if (folder / CONFIG_NAME).is_file() else []
        found += sorted(folder.glob(f"*/version_*/{CONFIG_NAME}")) + sorted(folder.glob(f"version_*/{CONFIG_NAME}"))
        if found:
            written = path.stat().st_mtime if path.exists() else float("inf")
            before = [f for f in found if f.stat().st_mtime <= written]
            best = max(before or found, key=lambda f: f.stat().st_mtime)
            return [best, *[f for f in found if f != best]]
        if folder.parent == folder:
            break
        folder = folder.parent
    return []


def _policy_node(config: Path) -> dict[str, Any]:
    """`model.init_args.policy` of a LightningCLI config file."""
    import yaml

    if not config.is_file():
        raise Geor1Error(f"config '{config}' does not exist (pass the YAML of the run, e.g. its logged config.yaml)")
    try:
        data = yaml.safe_load(config.read_text())
    except yaml.YAMLError as e:
        raise Geor1Error(f"config '{config}' is not valid YAML: {str(e).splitlines()[0]}") from None
    node: Any = data
    for key in ("model", "init_args", "policy"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        raise Geor1Error(f"config '{config}' has no model.init_args.policy (expected a geor1 fit config)")
    return node


def _build_policy(node: dict[str, Any], source: str) -> Policy:
    """The Policy a config's `model.init_args.policy` describes, built by jsonargparse (the same parsing and class
    resolution as `geor1 fit`)."""
    from jsonargparse import ArgumentParser

    from geor1.model.policy import Policy

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(Policy, "policy", required=True)
    try:
        cfg = parser.parse_object({"policy": node})
    except Exception as e:  # jsonargparse's ArgumentError: the message names the field
        raise Geor1Error(f"{source}: model.init_args.policy does not parse: {e}") from None
    policy: Policy = parser.instantiate_classes(cfg).policy
    return policy


def policy_from_config(config: str | Path) -> Policy:
    """The Policy that a LightningCLI config's `model.init_args.policy` describes."""
    path = Path(config)
    return _build_policy(_policy_node(path), f"config '{path}'")


def _check_shapes(ckpt: Path, wanted: dict[str, Tensor], found: dict[str, Any]) -> None:
    missing = [k for k in wanted if k not in found]
    if missing and not any(k.startswith(PREFIX) for k in found):
        first = sorted(found)[0] if found else "none"
        raise CheckpointMismatch(
            f"checkpoint '{ckpt}' holds no policy weights (no tensor under '{PREFIX}'; its first is '{first}'): "
            f"not a checkpoint of an SFT or GRPO run"
        )
    if missing:
        raise CheckpointMismatch(
            f"checkpoint '{ckpt}' does not fit this config: key '{missing[0]}' is missing "
            f"({len(missing)} of {len(wanted)} policy tensors missing: a checkpoint of another model, or LoRA on one "
            f"side only)"
        )
    for k, t in wanted.items():
        shape = tuple(found[k])
        if shape != tuple(t.shape):
            raise CheckpointMismatch(
                f"checkpoint '{ckpt}' does not fit this config: key '{k}' has shape {shape}, the "
                f"config's model has {tuple(t.shape)}"
            )


def load_policy_weights(policy: Policy, ckpt: str | Path) -> None:
    """Copy the policy's weights from a Lightning checkpoint into `policy`, in place: a distributed checkpoint folder
    (one `.distcp` file per rank, read without a process group) or a single `.ckpt` file. A checkpoint whose tensors
    do not fit is a `CheckpointMismatch` naming the first key that does not."""
    path = Path(ckpt)
    own = {PREFIX + k: v for k, v in policy.state_dict().items()}  # the LightningModule's keys
    if path.is_dir():
        import torch.distributed.checkpoint as dcp

        if not (path / _DCP_METADATA).is_file():
            raise Geor1Error(f"checkpoint folder '{path}' has no {_DCP_METADATA}: not a distributed checkpoint")
        meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        found = {
            k[len("state_dict.") :]: v.size
            for k, v in meta.items()
            if k.startswith("state_dict.") and hasattr(v, "size")
        }
        _check_shapes(path, own, found)
        dcp.load({"state_dict": own}, checkpoint_id=str(path), no_dist=True)  # in place, into the policy's tensors
        return
    if not path.is_file():
        raise Geor1Error(f"checkpoint '{path}' does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise Geor1Error(f"checkpoint '{path}' cannot be read as a Lightning checkpoint: {e}") from None
    if not isinstance(data, dict) or "state_dict" not in data:
        raise Geor1Error(f"checkpoint '{path}' has no 'state_dict' key (not a Lightning checkpoint)")
    state = data["state_dict"]
    _check_shapes(path, own, {k: v.shape for k, v in state.items()})
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k])


def _saved_policy_node(ckpt: Path) -> dict[str, Any] | None:
    """The policy's `{class_path, init_args}` if the checkpoint's own hyper_parameters hold it (a module that saves
    its policy's settings), else None."""
    meta = ckpt / _LIGHTNING_METADATA if ckpt.is_dir() else ckpt
    if not meta.is_file():
        return None
    try:
        data = torch.load(meta, map_location="cpu", weights_only=True, mmap=not ckpt.is_dir())
    except Exception:
        return None  # unreadable: load_policy_weights says so, with the reason
    hparams = data.get("hyper_parameters") if isinstance(data, dict) else None
    node = hparams.get("policy") if isinstance(hparams, dict) else None
    return node if isinstance(node, dict) and "class_path" in node else None


def export_checkpoint(ckpt: str | Path, config: str | Path | None, out: str | Path, merge_lora: bool = True) -> Path:
    """`geor1 model export`: the policy of `config` with the weights of `ckpt`, written to `out` (one process).

    `config` None: the policy settings the checkpoint itself holds, else the config.yaml LightningCLI saved for the
    run (`run_configs`). A checkpoint that does not fit the config is an error that names the run's own saved
    config."""
    path = Path(ckpt)
    if not path.exists():
        raise Geor1Error(f"checkpoint '{path}' does not exist")
    saved = run_configs(path)
    node = _saved_policy_node(path) if config is None else None
    if node is not None:
        source = f"the policy settings saved in checkpoint '{path}'"
    elif config is None:
        if not saved:
            raise Geor1Error(
                f"no config.yaml of the run found next to checkpoint '{path}' (looked in its folder and two above, "
                f"and their version_* folders): pass the run's YAML with --config"
            )
        source = f"config '{saved[0]}'"
        node = _policy_node(saved[0])
        log.info("checkpoint %s: using the run's saved config %s", path, saved[0])
    else:
        source = f"config '{config}'"
        node = _policy_node(Path(config))
    policy = _build_policy(node, source)
    try:
        load_policy_weights(policy, path)
    except CheckpointMismatch as e:
        raise CheckpointMismatch(f"{e} ({source}); {_mismatch_hint(config, saved)}") from None
    folder = policy.save_pretrained(Path(out), merge_lora=merge_lora)
    log.info("checkpoint %s exported to %s (%s)", path, folder, source)
    return folder


def _mismatch_hint(config: str | Path | None, saved: list[Path]) -> str:
    """What to do when the checkpoint does not fit the config used: point at the run's own saved config."""
    given = Path(config).resolve() if config is not None else None
    others = [f for f in saved if f != given]
    if given is not None and others:
        return (
            f"the run's own saved config is '{others[0]}': export with --config {others[0]}, or without --config "
            f"(geor1 finds it)"
        )
    if given is None and others[1:]:
        return f"the run saved other configs too (another launch?): try --config {others[1]}"
    if given is None or given in saved:
        return "the checkpoint comes from another run or launch: pass the YAML it was launched with as --config"
    return (
        "pass the config.yaml LightningCLI saved for the run that wrote this checkpoint (in its log folder, e.g. "
        "<run>/tb/version_N/config.yaml), or leave --config out to have geor1 look for it next to the checkpoint"
    )
