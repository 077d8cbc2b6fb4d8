"""A stand-in for the `vllm` package (tests only), run by plain transformers, mirroring the slice of vLLM's public
API that geor1's rollout backend calls, and stricter than vLLM where a mistake would otherwise go unnoticed:

- `LLM(model, seed, dtype, mm_processor_kwargs, worker_extension_cls, logprobs_mode, ...)`: loads the folder's model
  and processor (as vLLM does); `mm_processor_kwargs` are applied to every processor call (vLLM merges them into
  its HF processor calls); the extension class is mixed into the worker (as vLLM does with `worker_extension_cls`).
- `LLM.collective_rpc(method, timeout=None, args=(), kwargs=None)` -> one result per worker (here one worker).
- worker: `self.model_runner.model.load_weights(weights=...)` accepts ONLY the names of the checkpoint the engine
  loaded (Qwen2.5-VL: mapped to modules by vLLM's prefix rules), plain `torch.Tensor`s (a DTensor is an error), the
  exact shape, and the engine's dtype (vLLM would cast silently; the sync is expected to send the engine's dtype).
- `LLM.generate(requests, sampling_params)`: `RequestOutput.outputs[j].token_ids / finish_reason / logprobs` (with
  `SamplingParams(logprobs=0)`: per token `{token_id: Logprob}`, "raw_logprobs" or "processed_logprobs" (after
  temperature / top-p) as `logprobs_mode` says).
- `LLM.num_image_tokens(image)`: (test helper) how many placeholder tokens the engine's processor gives an image.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

# vLLM's Qwen2.5-VL checkpoint-name mapper, with transformers' module names as the engine's own
_QWEN_PREFIXES = (("lm_head.", "lm_head."), ("visual.", "model.visual."), ("model.", "model.language_model."))
_MM_KEYS = {"size", "min_pixels", "max_pixels"}
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 / 0: all tokens
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class _EngineModel:
    """What `model_runner.model` is to a worker: the engine's weights and their loader."""

    def __init__(self, model: torch.nn.Module, checkpoint: dict[str, str]) -> None:
        self.model = model
        self.params = dict(model.named_parameters())
        self.checkpoint = checkpoint  # checkpoint name -> module name
        self.loaded: list[str] = []

    @torch.no_grad()
    def load_weights(self, weights) -> set[str]:
        done = set()
        for name, tensor in weights:
            if name not in self.checkpoint:
                raise ValueError(f"There is no module or parameter named '{name}' in the checkpoint")
            if type(tensor) is not torch.Tensor:
                raise TypeError(f"{name}: expected a plain torch.Tensor, got {type(tensor).__name__}")
            param = self.params[self.checkpoint[name]]
            if tensor.shape != param.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} != engine's {tuple(param.shape)}")
            if tensor.dtype != param.dtype:
                raise TypeError(f"{name}: dtype {tensor.dtype} != engine's {param.dtype}")
            param.copy_(tensor)
            self.loaded.append(name)
            done.add(name)
        return done


class _Worker:
    def __init__(self, model: _EngineModel) -> None:
        self.model_runner = SimpleNamespace(model=model)
        self.device = torch.device("cpu")


def _checkpoint_map(model_dir: str, model: torch.nn.Module) -> dict[str, str]:
    from safetensors import safe_open

    if type(model).__name__ != "Qwen2_5_VLForConditionalGeneration":
        raise NotImplementedError(f"the stand-in engine knows Qwen2.5-VL only, not {type(model).__name__}")
    params = dict(model.named_parameters())
    out = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                pre, new = next((p, n) for p, n in _QWEN_PREFIXES if key.startswith(p))
                target = new + key[len(pre) :]
                if target not in params or tuple(fh.get_slice(key).get_shape()) != tuple(params[target].shape):
                    raise RuntimeError(f"stand-in engine: checkpoint {key} does not map onto its model ({target})")
                out[key] = target
    return out


class LLM:
    instances: list[LLM] = []

    def __init__(
        self,
        model: str,
        seed: int = 0,
        dtype: str = "auto",
        enable_prefix_caching: bool = True,
        mm_processor_kwargs: dict | None = None,
        worker_extension_cls: str | None = None,
        logprobs_mode: str = "raw_logprobs",
        **kwargs,
    ) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        unknown = set(mm_processor_kwargs or {}) - _MM_KEYS
        if unknown:
            raise ValueError(f"unknown mm_processor_kwargs {sorted(unknown)}")
        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise ValueError(f"logprobs_mode {logprobs_mode!r} is not supported by the stand-in")
        self.model = AutoModelForImageTextToText.from_pretrained(
            model, local_files_only=True, dtype=_DTYPES[dtype] if dtype != "auto" else "auto"
        ).eval()
        self.processor = AutoProcessor.from_pretrained(model, local_files_only=True)
        self.mm_kwargs = dict(mm_processor_kwargs or {})
        self.logprobs_mode = logprobs_mode
        self.kwargs = dict(
            kwargs,
            model=model,
            seed=seed,
            dtype=dtype,
            mm_processor_kwargs=mm_processor_kwargs,
            worker_extension_cls=worker_extension_cls,
            logprobs_mode=logprobs_mode,
        )
        self.engine_model = _EngineModel(self.model, _checkpoint_map(model, self.model))
        bases: tuple[type, ...] = (_Worker,)
        if worker_extension_cls is not None:
            module, _, cls = worker_extension_cls.rpartition(".")
            bases = (_Worker, getattr(importlib.import_module(module), cls))
        self.workers = [type("Worker", bases, {})(self.engine_model)]
        self.resets = 0
        self.rpc_calls: list[tuple] = []  # (method, args) per call
        LLM.instances.append(self)

    @property
    def loaded(self) -> list[str]:
        return self.engine_model.loaded

    def collective_rpc(
        self, method, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None
    ) -> list:
        if not isinstance(method, str):
            raise TypeError("the stand-in engine takes a worker method name")
        self.rpc_calls.append((method, args))
        return [getattr(w, method)(*args, **(kwargs or {})) for w in self.workers]

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    def _process(self, text: str, images) -> dict:
        return self.processor(text=[text], images=images, return_tensors="pt", **self.mm_kwargs)

    def num_image_tokens(self, image) -> int:
        enc = self._process("<|vision_start|><|image_pad|><|vision_end|>", [image])
        return int((enc["input_ids"] == self.model.config.image_token_id).sum())

    @torch.no_grad()
    def generate(self, requests: list[dict], sampling_params: SamplingParams, use_tqdm: bool = True) -> list:
        sp = sampling_params
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else sp.stop_token_ids[0]
        outs = []
        for req in requests:
            images = (req.get("multi_modal_data") or {}).get("image")
            enc = self._process(req["prompt"], images)
            greedy = sp.temperature == 0.0
            kw = dict(
                do_sample=not greedy,
                max_new_tokens=sp.max_tokens,
                num_return_sequences=sp.n,
                eos_token_id=sp.stop_token_ids,
                pad_token_id=pad,
                return_dict_in_generate=True,
                output_scores=True,
                output_logits=True,
            )
            kw.update(
                dict(temperature=None, top_p=None, top_k=None)
                if greedy
                else dict(temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k if sp.top_k > 0 else None)
            )
            gen = self.model.generate(**enc, **kw)
            seqs = gen.sequences[:, enc["input_ids"].shape[1] :]
            per_step = gen.scores if self.logprobs_mode == "processed_logprobs" else gen.logits
            logp = torch.stack([s.float().log_softmax(-1) for s in per_step], 1)  # [n, steps, V]
            samples = []
            for r, row in enumerate(seqs.tolist()):
                stop = next((i for i, t in enumerate(row) if t in sp.stop_token_ids), None)
                ids = row if stop is None else row[: stop + 1]  # vLLM keeps the stop token in token_ids
                lps = (
                    None
                    if sp.logprobs is None
                    else [{t: Logprob(float(logp[r, j, t]), rank=None)} for j, t in enumerate(ids)]
                )
                samples.append(
                    SimpleNamespace(token_ids=ids, finish_reason="length" if stop is None else "stop", logprobs=lps)
                )
            outs.append(SimpleNamespace(outputs=samples))
        return outs
