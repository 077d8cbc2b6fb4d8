"""Optional vLLM rollout backend for GRPO (`RolloutSettings(backend="vllm")`): colocated with the trainer.

vLLM samples the G completions of each prompt (`SamplingParams(n=G)`: it shares the prompt's prefill and image
encoding itself, through its prefix cache); the trainer's `Policy` computes every log-prob the loss needs. vLLM's own
per-token sampling log-probs are asked for only when the truncated importance-sampling correction is on
(`RolloutSettings(vllm_is_cap=C)`, see `grpo_math.truncated_is_weights`).

Weight sync, before a step's rollout: the policy's parameters are walked module by module in a fixed order, each one
gathered whole (`DTensor.full_tensor()` under FSDP2 -- a collective, so every rank walks the same order), LoRA merged
on the fly (W + s * B @ A, no model copy), renamed to the names of the checkpoint the engine loaded (wrapper parts
such as PEFT's `base_model.model.` / `.base_layer.`, `_orig_mod.`, `_checkpoint_wrapped_module.` dropped, then
transformers' own save-time renaming), cast to the engine's dtype, and streamed in chunks through vLLM's public
worker-extension path: `LLM(worker_extension_cls=...)` mixes `WeightSyncExtension` into every worker and
`LLM.collective_rpc("geor1_load_weights", args=(chunk,))` runs `self.model_runner.model.load_weights(weights=chunk)`
there. The tensors go by reference, so the engine runs in the trainer's process: `VLLM_ENABLE_V1_MULTIPROCESSING=0`
is set unless the user set it. Each DDP/FSDP rank runs its own engine on its own GPU.

Image resolution: the engine loads a folder whose processor files are the policy's own (weights linked from the
policy's source folder), and gets the policy's pixel limits as `mm_processor_kwargs={"size": ...}`; at start the
engine folder's image processor, with those kwargs, must equal the policy's (else a Geor1Error), so vLLM and the
policy see the same number of image tokens.

`vllm` is not a dependency of geor1 (it pins its own torch and needs a GPU): choosing this backend without it
installed is an error that says so. CI exercises all of this against a strict stand-in engine (tests/fake_vllm).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from geor1 import Geor1Error
from geor1.data.sample import Prompt
from geor1.model.adapters.base import HFModel
from geor1.model.policy import Policy, Rollout

log = logging.getLogger(__name__)

EXTENSION = "geor1.model.vllm_rollout.WeightSyncExtension"
_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
_WEIGHT_FILES = ("config.json", "generation_config.json", "*.safetensors", "*.safetensors.index.json", "*.py")


def require_vllm(user: str = "rollout.backend 'vllm'", instead: str = "rollout.backend: hf") -> Any:
    """The `vllm` module, or a Geor1Error saying that `user` needs it, how to get it, or to use `instead`."""
    if importlib.util.find_spec("vllm") is None:
        raise Geor1Error(
            f"{user} needs the vllm package, which is not installed: pip install vllm "
            f"(on a CUDA machine, matching its torch), or use {instead}"
        )
    return importlib.import_module("vllm")


class WeightSyncExtension:
    """Mixed into each vLLM worker by `LLM(worker_extension_cls=EXTENSION)`; called via `LLM.collective_rpc`."""

    def geor1_load_weights(self, weights: list[tuple[str, Tensor]]) -> int:
        """Load full tensors under checkpoint names into the worker's model; returns how many."""
        self.model_runner.model.load_weights(weights=weights)  # type: ignore[attr-defined]
        return len(weights)


# ---------------------------------------------------------------------- weights: names and full tensors
def plain_name(name: str) -> str:
    """A wrapped parameter name -> the Hugging Face module name: wrapper parts and PEFT's prefixes dropped."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _full(t: Tensor) -> Tensor:
    """The whole tensor: a DTensor is all-gathered (a collective every rank must call in the same order)."""
    from torch.distributed.tensor import DTensor

    return (t.full_tensor() if isinstance(t, DTensor) else t).detach()


def _lora_delta(module: Any, name: str) -> Tensor | None:
    """s * B @ A summed over the active adapters of a PEFT LoRA Linear ([out, in] float32), None if none applies."""
    _check_lora(module, name)
    if module.merged or module.disable_adapters:
        return None  # the base weight already holds the merge / adapters are off
    delta = None
    for a in module.active_adapters:
        if a not in module.lora_A:
            continue
        d = (_full(module.lora_B[a].weight).float() @ _full(module.lora_A[a].weight).float()) * module.scaling[a]
        delta = d if delta is None else delta + d
    if delta is not None and module.fan_in_fan_out:
        delta = delta.T
    return delta


def _check_lora(module: Any, name: str) -> None:
    """Only plain LoRA on Linear layers is merged here; anything else is refused by name."""
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(module, LoraLinear):
        raise Geor1Error(f"vLLM weight sync merges LoRA into Linear layers only; {name} is a {type(module).__name__}")
    for a in module.active_adapters:
        if module.use_dora.get(a) or a in getattr(module, "lora_variant", {}):
            raise Geor1Error(f"vLLM weight sync cannot merge the LoRA variant (e.g. DoRA) of adapter {a!r} in {name}")


def weight_sources(model: nn.Module) -> Iterator[tuple[str, Callable[[], Tensor]]]:
    """(plain name, a function returning the full merged tensor) per parameter, in module order.

    Every rank must call the functions in this order (each may be a collective). Tied parameters come once.
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    seen: set[int] = set()
    skip: str | None = None
    for mod_name, module in model.named_modules():
        if skip is not None and mod_name.startswith(skip):
            continue
        skip = None
        if isinstance(module, ModulesToSaveWrapper):
            raise Geor1Error(f"vLLM weight sync does not support PEFT modules_to_save ({mod_name})")
        if isinstance(module, LoraLayer):
            skip = mod_name + "."
            _check_lora(module, mod_name)
            base = module.get_base_layer()
            for pname, p in base.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                if pname == "weight":
                    yield plain_name(f"{mod_name}.weight"), partial(_merged_lora, p, module, mod_name)
                else:
                    yield plain_name(f"{mod_name}.{pname}"), partial(_full, p)
            continue
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            yield plain_name(f"{mod_name}.{pname}" if mod_name else pname), partial(_full, p)


def _merged(weight: Tensor, delta: Tensor | None) -> Tensor:
    w = _full(weight)
    return w if delta is None else (w.float() + delta).to(w.dtype)


def _merged_lora(weight: Tensor, module: Any, name: str) -> Tensor:
    """The full base `weight` of LoRA layer `module` with its adapters' delta merged in."""
    return _merged(weight, _lora_delta(module, name))


def checkpoint_names(base: HFModel, names: list[str]) -> dict[str, str]:
    """Module names -> the names transformers writes them under (its save-time renaming, e.g. Qwen2.5-VL's
    `model.language_model.layers.0...` -> `model.layers.0...`), the names of the checkpoint vLLM loads."""
    from transformers.core_model_loading import revert_weight_conversion

    ref = base
    if getattr(base, "_weight_conversions", None) is None:  # built in-process: transformers looks up its class
        with torch.device("meta"):
            ref = _plain_class(base)(base.config)
    out = {}
    for n in names:
        renamed = list(revert_weight_conversion(ref, {n: torch.empty(0)}))
        if len(renamed) != 1:
            raise Geor1Error(
                f"transformers converts {n} of {type(base).__name__} on save into {renamed}, not one "
                f"renamed tensor: the vLLM weight sync supports renamings only"
            )
        out[n] = renamed[0]
    return out


def _plain_class(model: nn.Module) -> type:
    """The model's own class, under FSDP2's dynamic `FSDP<Class>` subclass."""
    from torch.distributed.fsdp import FSDPModule

    cls = type(model)
    return next(c for c in cls.__mro__ if not issubclass(c, FSDPModule)) if isinstance(model, FSDPModule) else cls


def folder_weight_names(model_dir: str | Path) -> set[str]:
    """The tensor names in a folder's safetensors files (headers only)."""
    from safetensors import safe_open

    names: set[str] = set()
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            names.update(fh.keys())
    if not names:
        raise Geor1Error(f"vLLM engine folder {model_dir} has no *.safetensors weights")
    return names


def pixel_limits(policy: Policy) -> dict[str, Any]:
    """The policy's image-size limits as vLLM `mm_processor_kwargs` ({} for processors without pixel limits).

    Under transformers 5 they live in `image_processor.size` (`min_pixels`/`max_pixels` attributes are None)."""
    ip = getattr(policy.processor, "image_processor", None)
    size = getattr(ip, "size", None)
    get = size.get if isinstance(size, dict) else (lambda key: getattr(size, key, None))
    lo, hi = get("shortest_edge"), get("longest_edge")
    if lo is None or hi is None or getattr(ip, "patch_size", None) is None:
        return {}
    return {"size": {"shortest_edge": int(lo), "longest_edge": int(hi)}}


def check_same_resolution(policy: Policy, model_dir: str | Path, mm_kwargs: dict[str, Any]) -> None:
    """The engine folder's image processor, with `mm_kwargs` applied as vLLM applies them, must equal the policy's
    (same resizing, hence the same number of image tokens); else a Geor1Error naming the differing settings."""
    ip = getattr(policy.processor, "image_processor", None)
    if ip is None:
        return
    from transformers import AutoImageProcessor

    engine_ip = AutoImageProcessor.from_pretrained(str(model_dir), local_files_only=True, **mm_kwargs)
    a, b = engine_ip.to_dict(), ip.to_dict()
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    if diff:
        raise Geor1Error(
            f"vLLM's image processor from {model_dir} differs from the policy's (engine, policy): "
            f"{diff}; images would get a different number of tokens"
        )


# ---------------------------------------------------------------------- the engine
class VLLMRollout:
    """A vLLM engine that samples for a `Policy`.

    Args:
        policy: the policy being trained (its processor builds the prompts; its weights are synced in).
        model_dir: the folder vLLM loads at start; default: the policy's source folder's weights with the policy's
            processor files (a temporary folder of links), or, for an in-process policy such as TinyPolicy, its
            gathered weights written to a temporary folder.
        engine_kwargs: extra `vllm.LLM` arguments, e.g. {"gpu_memory_utilization": 0.3, "limit_mm_per_prompt":
            {"image": 5}, "dtype": "bfloat16"} (default dtype: the policy's).
        seed: the engine's sampling seed.
        sampling_logprobs: ask vLLM for each sampled token's log-prob (`logprobs=0`, `logprobs_mode=
            "processed_logprobs"`: after temperature, as the policy's log-probs are) for the IS correction.
        chunk_mb: how many MiB of gathered tensors one `collective_rpc` carries (bounds the sync's extra memory).
    """

    def __init__(
        self,
        policy: Policy,
        model_dir: str | None = None,
        engine_kwargs: dict[str, Any] | None = None,
        seed: int = 0,
        sampling_logprobs: bool = False,
        chunk_mb: float = 512,
    ) -> None:
        vllm = require_vllm()
        self._vllm = vllm
        self.sampling_logprobs = sampling_logprobs
        self.chunk_bytes = int(chunk_mb * 2**20)
        engine_kwargs = dict(engine_kwargs or {})
        dtype = engine_kwargs.pop("dtype", None) or str(next(policy.model.parameters()).dtype).removeprefix("torch.")
        self.dtype: torch.dtype = getattr(torch, dtype)
        names = [n for n, _ in weight_sources(policy.model)]
        self._names = checkpoint_names(policy.base_model(), names)
        self._tmp: tempfile.TemporaryDirectory | None = None
        if model_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="geor1-vllm-")
            source = Path(str(getattr(policy, "source", "")))
            if source.is_dir() and (source / "config.json").is_file():
                model_dir = str(_link_weights(source, self._tmp.name))
                policy.processor.save_pretrained(model_dir)  # the policy's processor (resolution), not the folder's
            else:
                model_dir = self._write_folder(policy, self._tmp.name)
        self._check_names(model_dir)
        mm_kwargs = pixel_limits(policy)
        check_same_resolution(policy, model_dir, mm_kwargs)
        kwargs: dict[str, Any] = {
            "model": model_dir,
            "seed": seed,
            "dtype": dtype,
            "enable_prefix_caching": True,
            "worker_extension_cls": EXTENSION,
        }
        if mm_kwargs:
            kwargs["mm_processor_kwargs"] = mm_kwargs  # the same image resizing (and token count) as the policy
        if sampling_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"
        kwargs.update(engine_kwargs)
        if os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0") != "0":
            log.warning("VLLM_ENABLE_V1_MULTIPROCESSING is set: weight chunks will be serialised to the engine process")
        log.info("vLLM rollout engine from %s (%s)", model_dir, {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = vllm.LLM(**kwargs)

    def _check_names(self, model_dir: str) -> None:
        """Every synced name is a weight of the engine's checkpoint, and every checkpoint weight is synced."""
        have = folder_weight_names(model_dir)
        ours = set(self._names.values())
        unknown, stale = sorted(ours - have), sorted(have - ours)
        if unknown or stale:
            raise Geor1Error(
                f"vLLM weight sync names do not match the checkpoint in {model_dir}: not in it "
                f"{unknown[:5]}, never synced {stale[:5]}"
            )

    def _write_folder(self, policy: Policy, out: str) -> str:
        """An in-process policy as a folder vLLM loads: config, processor and the gathered (merged) weights under
        checkpoint names. A collective under FSDP2 (every rank writes its own temporary folder)."""
        from safetensors.torch import save_file

        base = policy.base_model()
        base.config.architectures = [_plain_class(base).__name__]  # what vLLM picks its model class by
        base.config.save_pretrained(out)
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.save_pretrained(out)
        policy.processor.save_pretrained(out)
        tensors = {name: t.contiguous() for name, t in self._stream(policy)}
        save_file(tensors, str(Path(out) / "model.safetensors"), metadata={"format": "pt"})
        return out

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def _stream(self, policy: Policy) -> Iterator[tuple[str, Tensor]]:
        """(checkpoint name, full tensor in the engine's dtype), one parameter at a time, in module order."""
        for name, get in weight_sources(policy.model):
            yield self._names[name], get().to(self.dtype)

    @torch.no_grad()
    def sync_weights(self, policy: Policy) -> int:
        """Push the policy's current weights (LoRA merged) into the engine; returns how many tensors.
        Under FSDP2 every rank must call it at the same point (each gather is a collective)."""
        n, chunk, size = 0, [], 0
        for name, tensor in self._stream(policy):
            chunk.append((name, tensor))
            size += tensor.numel() * tensor.element_size()
            if size >= self.chunk_bytes:
                n += self._load(chunk)
                chunk, size = [], 0
        if chunk:
            n += self._load(chunk)
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        return n

    def _load(self, chunk: list[tuple[str, Tensor]]) -> int:
        counts = self.llm.collective_rpc("geor1_load_weights", args=(chunk,))
        if any(c != len(chunk) for c in counts):
            raise Geor1Error(f"vLLM workers loaded {counts} of {len(chunk)} weights")
        return len(chunk)

    # ------------------------------------------------------------------ sampling
    def generate(
        self,
        policy: Policy,
        prompts: list[Prompt],
        group_size: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        do_sample: bool = True,
        top_k: int | None = None,
    ) -> Rollout:
        """B prompts -> a `Rollout` of B*G completions grouped by prompt, like `Policy.generate`; with
        `sampling_logprobs`, its `sample_logprobs` are vLLM's ([B*G, T], NaN where vLLM gave none, 0 on padding)."""
        requests = []
        for p in prompts:
            text = policy.processor.apply_chat_template(p.messages(), tokenize=False, add_generation_prompt=True)
            request: dict[str, Any] = {"prompt": text}
            if p.images:
                request["multi_modal_data"] = {"image": [im.convert("RGB") for im in p.images]}
            requests.append(request)
        extra = {"top_k": top_k} if top_k is not None and do_sample else {}  # unset: vLLM's default (all tokens)
        params = self._vllm.SamplingParams(
            n=group_size,
            max_tokens=max_new_tokens,
            temperature=temperature if do_sample else 0.0,
            top_p=top_p if do_sample else 1.0,
            stop_token_ids=list(policy.eos_ids),
            logprobs=0 if self.sampling_logprobs else None,
            **extra,
        )
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise Geor1Error(f"vLLM returned {len(outputs)} results for {len(prompts)} prompts")
        rows: list[list[int]] = []
        lps: list[list[float]] = []
        for out in outputs:  # vLLM keeps the request order
            if len(out.outputs) != group_size:
                raise Geor1Error(f"vLLM returned {len(out.outputs)} samples for a prompt, expected {group_size}")
            for sample in out.outputs:
                ids = list(sample.token_ids)[:max_new_tokens]
                if self.sampling_logprobs:
                    if sample.logprobs is None or len(sample.logprobs) < len(ids):
                        raise Geor1Error("vLLM returned no sampling log-probs for a completion (logprobs=0 asked)")
                    lps.append([float(sample.logprobs[j][t].logprob) for j, t in enumerate(ids)])
                # a sample stopped by an EOS keeps it (the loss trains the stop); add it if the engine left it out
                if (
                    getattr(sample, "finish_reason", None) == "stop"
                    and not any(t in policy.eos_ids for t in ids)
                    and len(ids) < max_new_tokens
                ):
                    ids.append(policy.eos_ids[0])
                    if self.sampling_logprobs:
                        lps[-1].append(math.nan)  # no log-prob for a token the engine did not report
                rows.append(ids)
        return rollout_from_ids(policy, prompts, rows, group_size, lps if self.sampling_logprobs else None)


def rollout_from_ids(
    policy: Policy,
    prompts: list[Prompt],
    rows: list[list[int]],
    group_size: int,
    logprobs: list[list[float]] | None = None,
) -> Rollout:
    """Completion token ids (B*G lists, grouped by prompt; optional per-token sampling log-probs aligned with them)
    -> a Rollout whose `inputs` are the policy's own encoding of the prompts (for the log-prob passes)."""
    width = max((len(r) for r in rows), default=0) or 1
    ids = torch.full((len(rows), width), policy.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    lp = torch.zeros((len(rows), width), dtype=torch.float32) if logprobs is not None else None
    for i, r in enumerate(rows):
        eos_at = next((j for j, t in enumerate(r) if t in policy.eos_ids), None)
        r = r if eos_at is None else r[: eos_at + 1]  # nothing after the first EOS
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
            if lp is not None and logprobs is not None:
                lp[i, : len(r)] = torch.tensor(logprobs[i][: len(r)], dtype=torch.float32)
    truncated = torch.tensor([not any(t in policy.eos_ids for t in r) for r in rows], dtype=torch.bool)
    ids, mask = ids.to(policy.device), mask.to(policy.device)
    texts = policy.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Rollout(
        policy.encode(prompts),
        ids,
        mask,
        texts,
        group_size,
        truncated,
        sample_logprobs=None if lp is None else lp.to(policy.device),
    )


def _link_weights(source: Path, out: str) -> Path:
    """A folder of links to `source`'s config and weight files only (processor files are written separately)."""
    dst = Path(out)
    for pattern in _WEIGHT_FILES:
        for f in source.glob(pattern):
            (dst / f.name).symlink_to(f.resolve())
    return dst
