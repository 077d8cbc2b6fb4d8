"""The optional vLLM rollout backend: a clear error without vllm, and its plumbing (prompts with images, weight
names incl. merged LoRA, the B*G layout, EOS handling, per-step weight sync) against a stand-in engine
(tests/fake_vllm) that runs plain transformers on the weights it is sent. The real engine needs vllm and a GPU."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from geor1 import Geor1Error
from geor1.data.toy import ToyPairing, ToyPairingDataModule
from geor1.model import LoraSpec, TinyPolicy
from geor1.objectives.grpo import GRPOModule

FAKE = Path(__file__).parent / "fake_vllm"


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    sys.modules.pop("vllm", None)
    import vllm

    vllm.LLM.instances.clear()
    yield vllm
    sys.modules.pop("vllm", None)


def test_choosing_vllm_without_it_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(Geor1Error, match="pip install vllm"):
        GRPOModule(TinyPolicy(seed=0), num_generations=2, rollout_backend="vllm")
    with pytest.raises(Geor1Error, match="rollout_backend"):
        GRPOModule(TinyPolicy(seed=0), num_generations=2, rollout_backend="sglang")


def _prompts(n: int):
    data = ToyPairing(n, num_candidates=2, seed=3)
    return [data[i].prompt for i in range(n)]


@pytest.mark.parametrize("lora", [False, True])
def test_engine_greedy_rollout_equals_the_policy_after_a_weight_sync(fake_vllm, lora):
    from geor1.model.vllm_rollout import VLLMRollout

    policy = TinyPolicy(seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.0) if lora else None).eval()
    engine = VLLMRollout(policy)
    with torch.no_grad():  # move the policy away from what the engine loaded at start
        for name, p in policy.model.named_parameters():
            if p.requires_grad and ("lora_B" in name or not lora):
                p.add_(0.05 * torch.randn_like(p))
    prompts = _prompts(3)
    before = engine.generate(policy, prompts, 1, 10, do_sample=False)
    n = engine.sync_weights(policy)
    assert n == len(dict(engine.llm.policy.model.named_parameters()))  # every weight, under its plain name
    got = engine.generate(policy, prompts, 1, 10, do_sample=False)
    want = policy.generate(prompts, num_samples=1, max_new_tokens=10, do_sample=False)
    assert torch.equal(got.completion_mask, want.completion_mask)
    assert torch.equal(got.completion_ids, want.completion_ids) and got.texts == want.texts
    assert torch.equal(got.truncated, want.truncated)
    assert not torch.equal(before.completion_ids, got.completion_ids)  # the sync mattered
    if lora:
        assert any("lora_" in k for k, _ in policy.model.named_parameters())  # adapters unmerged again


def test_grpo_fit_with_vllm_backend_syncs_every_step(fake_vllm, tmp_path):
    L.seed_everything(0)
    module = GRPOModule(TinyPolicy(seed=0), num_generations=3, max_new_tokens=8, rollout_backend="vllm",
                        vllm_engine={"gpu_memory_utilization": 0.3}, log_completions_every_n_steps=0,
                        optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    dm = ToyPairingDataModule(num_train=8, num_val=2, num_candidates=2, batch_size=2)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    (llm,) = fake_vllm.LLM.instances
    assert llm.kwargs["gpu_memory_utilization"] == 0.3
    n_weights = len(dict(llm.policy.model.named_parameters()))
    assert len(llm.loaded) == 3 * n_weights and llm.resets == 3  # one sync per optimizer step
    rollout = module._rollout(_prompts(2))  # a step later: the engine gets the weights of the 3 updates first
    assert len(llm.loaded) == 4 * n_weights
    assert rollout.completion_ids.shape[0] == 2 * 3 and len(rollout.texts) == 6  # B*G rows, grouped by prompt
    for (name, a), b in zip(llm.policy.model.named_parameters(), module.policy.model.parameters()):
        assert torch.equal(a, b.detach()), name  # the engine holds the trained weights
