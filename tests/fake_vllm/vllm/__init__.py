"""A stand-in for the `vllm` package (tests only): the slice of its API geor1's rollout backend calls (`LLM`,
`SamplingParams`, `llm_engine.model_executor.driver_worker.model_runner.model.load_weights`, `reset_prefix_cache`,
request dicts with `multi_modal_data`, `RequestOutput.outputs[j].token_ids / finish_reason`), run by plain
transformers on the weights it was given. Unknown weight names raise, as vLLM's loader does."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: list[int] = field(default_factory=list)


class LLM:
    instances: list["LLM"] = []

    def __init__(self, model: str, seed: int = 0, enable_prefix_caching: bool = True,
                 mm_processor_kwargs: dict | None = None, **kwargs) -> None:
        from geor1.model.policy import Policy

        self.policy = Policy(model, **(mm_processor_kwargs or {})).eval()
        self.kwargs = dict(kwargs, seed=seed, mm_processor_kwargs=mm_processor_kwargs)
        self.loaded: list[str] = []
        self.resets = 0
        runner = SimpleNamespace(model=SimpleNamespace(load_weights=self._load_weights))
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=runner)))
        LLM.instances.append(self)

    @torch.no_grad()
    def _load_weights(self, weights) -> None:
        params = dict(self.policy.model.named_parameters())
        for name, tensor in weights:
            if name not in params:
                raise KeyError(f"unknown weight {name}")
            params[name].copy_(tensor)
            self.loaded.append(name)

    def reset_prefix_cache(self) -> None:
        self.resets += 1

    @torch.no_grad()
    def generate(self, requests: list[dict], sampling_params: SamplingParams, use_tqdm: bool = True) -> list:
        p, sp = self.policy, sampling_params
        outs = []
        for req in requests:
            images = (req.get("multi_modal_data") or {}).get("image")
            enc = p.processor(text=[req["prompt"]], images=images, return_tensors="pt")
            greedy = sp.temperature == 0.0
            kw = dict(do_sample=not greedy, max_new_tokens=sp.max_tokens, num_return_sequences=sp.n,
                      eos_token_id=sp.stop_token_ids or p.eos_ids, pad_token_id=p.pad_id)
            kw.update(dict(temperature=None, top_p=None, top_k=None) if greedy else
                      dict(temperature=sp.temperature, top_p=sp.top_p, top_k=None))
            seqs = p.model.generate(**enc, **kw)[:, enc["input_ids"].shape[1]:]
            samples = []
            for row in seqs.tolist():
                stop = next((i for i, t in enumerate(row) if t in kw["eos_token_id"]), None)
                ids = row if stop is None else row[: stop + 1]  # vLLM keeps the stop token in token_ids
                samples.append(SimpleNamespace(token_ids=ids, finish_reason="length" if stop is None else "stop"))
            outs.append(SimpleNamespace(outputs=samples))
        return outs
