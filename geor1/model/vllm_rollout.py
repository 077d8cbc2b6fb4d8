"""Optional vLLM rollout backend for GRPO (`GRPOModule(rollout_backend="vllm")`): colocated with the trainer.

vLLM samples the G completions of each prompt (`SamplingParams(n=G)`: it shares the prompt's prefill and image
encoding itself, through its prefix cache), the trainer's `Policy` computes every log-prob the loss needs (vLLM's
own log-probs are not used: they come from other kernels and would bias the ratio). Before a step's rollout the
current weights are pushed into the engine (`load_weights` on the engine's model, as TRL's colocate mode does; with
LoRA the merged weights). Each DDP rank runs its own engine on its own GPU.

`vllm` is not a dependency of geor1 (it pins its own torch and needs a GPU): choosing this backend without it
installed is an error that says so. CI exercises the plumbing (prompt building, weight names, the B*G layout,
EOS handling) against a stand-in engine; the real engine is exercised only where vLLM is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from geor1 import Geor1Error
from geor1.model.chat import Prompt
from geor1.model.policy import Policy, Rollout

log = logging.getLogger(__name__)


def require_vllm() -> Any:
    """The `vllm` module, or a Geor1Error that says how to get it."""
    if importlib.util.find_spec("vllm") is None:
        raise Geor1Error("rollout_backend 'vllm' needs the vllm package, which is not installed: pip install vllm "
                         "(on a CUDA machine, matching its torch), or use rollout_backend: hf")
    return importlib.import_module("vllm")


def _vllm_name(name: str) -> str | None:
    """A PEFT-wrapped parameter name -> the plain Hugging Face name vLLM loads; None for adapter weights."""
    if "lora_" in name or "modules_to_save" in name:
        return None
    name = name.removeprefix("base_model.model.")
    return name.replace(".base_layer.", ".")


class VLLMRollout:
    """A vLLM engine that samples for a `Policy`.

    Args:
        policy: the policy being trained (its processor builds the prompts; its weights are synced in).
        model_dir: the folder vLLM loads at start; default: the policy's own source folder, or (for an in-process
            policy such as TinyPolicy) a copy written to a temporary folder.
        engine_kwargs: extra `vllm.LLM` arguments, e.g. {"gpu_memory_utilization": 0.3, "tensor_parallel_size": 1}.
        seed: the engine's sampling seed.
    """

    def __init__(self, policy: Policy, model_dir: str | None = None, engine_kwargs: dict[str, Any] | None = None,
                 seed: int = 0) -> None:
        vllm = require_vllm()
        self._vllm = vllm
        self._tmp: tempfile.TemporaryDirectory | None = None
        if model_dir is None:
            source = Path(str(getattr(policy, "source", "")))
            if source.is_dir() and (source / "config.json").is_file():
                model_dir = str(source)
            else:
                self._tmp = tempfile.TemporaryDirectory(prefix="geor1-vllm-")
                model_dir = str(policy.save_pretrained(self._tmp.name))
        image_processor = getattr(policy.processor, "image_processor", None)
        mm_kwargs = {k: getattr(image_processor, k) for k in ("min_pixels", "max_pixels")
                     if getattr(image_processor, k, None) is not None}
        kwargs: dict[str, Any] = {"model": model_dir, "seed": seed, "enable_prefix_caching": True}
        if mm_kwargs:
            kwargs["mm_processor_kwargs"] = mm_kwargs  # the same image resizing (and token count) as the policy
        kwargs.update(engine_kwargs or {})
        log.info("vLLM rollout engine from %s (%s)", model_dir, {k: v for k, v in kwargs.items() if k != "model"})
        self.llm = vllm.LLM(**kwargs)

    # ------------------------------------------------------------------ weights
    def _named_weights(self, policy: Policy) -> Iterator[tuple[str, Tensor]]:
        for name, param in policy.model.named_parameters():
            plain = _vllm_name(name)
            if plain is not None:
                yield plain, param.data

    @torch.no_grad()
    def sync_weights(self, policy: Policy) -> int:
        """Push the policy's current weights (LoRA merged) into the engine; returns how many tensors."""
        engine_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        merged = policy.lora is not None
        if merged:
            policy.model.merge_adapter()
        try:
            n = 0
            for name, tensor in self._named_weights(policy):
                engine_model.load_weights([(name, tensor)])
                n += 1
        finally:
            if merged:
                policy.model.unmerge_adapter()
        self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
        return n

    # ------------------------------------------------------------------ sampling
    def generate(self, policy: Policy, prompts: list[Prompt], num_samples: int, max_new_tokens: int,
                 temperature: float = 1.0, top_p: float = 1.0, do_sample: bool = True) -> Rollout:
        """B prompts -> a `Rollout` of B*G completions grouped by prompt, like `Policy.generate`."""
        requests = []
        for p in prompts:
            text = policy.processor.apply_chat_template(p.messages(), tokenize=False, add_generation_prompt=True)
            request: dict[str, Any] = {"prompt": text}
            if p.images:
                request["multi_modal_data"] = {"image": [im.convert("RGB") for im in p.images]}
            requests.append(request)
        params = self._vllm.SamplingParams(n=num_samples, max_tokens=max_new_tokens,
                                           temperature=temperature if do_sample else 0.0,
                                           top_p=top_p if do_sample else 1.0,
                                           stop_token_ids=list(policy.eos_ids))
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False)
        if len(outputs) != len(prompts):
            raise Geor1Error(f"vLLM returned {len(outputs)} results for {len(prompts)} prompts")
        rows: list[list[int]] = []
        for out in outputs:  # vLLM keeps the request order
            if len(out.outputs) != num_samples:
                raise Geor1Error(f"vLLM returned {len(out.outputs)} samples for a prompt, expected {num_samples}")
            for sample in out.outputs:
                ids = list(sample.token_ids)[:max_new_tokens]
                # a sample stopped by an EOS keeps it (the loss trains the stop); add it if the engine left it out
                if getattr(sample, "finish_reason", None) == "stop" and not any(t in policy.eos_ids for t in ids) \
                        and len(ids) < max_new_tokens:
                    ids.append(policy.eos_ids[0])
                rows.append(ids)
        return rollout_from_ids(policy, prompts, rows, num_samples)


def rollout_from_ids(policy: Policy, prompts: list[Prompt], rows: list[list[int]], num_samples: int) -> Rollout:
    """Completion token ids (B*G lists, grouped by prompt) -> a Rollout whose `inputs` are the policy's own encoding
    of the prompts (for the log-prob passes)."""
    width = max((len(r) for r in rows), default=0) or 1
    ids = torch.full((len(rows), width), policy.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        eos_at = next((j for j, t in enumerate(r) if t in policy.eos_ids), None)
        r = r if eos_at is None else r[: eos_at + 1]  # nothing after the first EOS
        if r:
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
            mask[i, : len(r)] = True
    truncated = torch.tensor([not any(t in policy.eos_ids for t in r) for r in rows], dtype=torch.bool)
    ids, mask = ids.to(policy.device), mask.to(policy.device)
    texts = policy.tokenizer.batch_decode(ids, skip_special_tokens=True)
    return Rollout(policy.encode(prompts), ids, mask, texts, num_samples, truncated)
