"""The optional vLLM rollout backend against a strict stand-in engine (tests/fake_vllm: plain transformers; weights
only under the names of the checkpoint it loaded, plain tensors of its shape and dtype): a clear error without vllm;
weight sync (merged LoRA, FSDP2 DTensors, wrapper prefixes) equal to the plain model; the policy's image resolution;
the B*G layout and EOS handling; per-step sync in `fit`; the truncated importance-sampling correction. The real
engine needs vllm and a GPU."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist

from geor1 import Geor1Error
from geor1.data.sample import Prompt
from geor1.data.toy import ToyPairing, ToyPairingDataModule
from geor1.model import LoraSpec, Policy, TinyPolicy
from geor1.objectives.grpo import GRPOModule
from geor1.objectives.grpo_math import truncated_is_weights
from geor1.objectives.grpo_settings import RolloutSettings

FAKE = Path(__file__).parent / "fake_vllm"
ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"


@pytest.fixture
def fake_vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    sys.modules.pop("vllm", None)
    had_env = ENV in os.environ
    import vllm

    vllm.LLM.instances.clear()
    yield vllm
    sys.modules.pop("vllm", None)
    if not had_env:
        os.environ.pop(ENV, None)


def test_choosing_vllm_without_it_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(Geor1Error, match="pip install vllm"):
        GRPOModule(TinyPolicy(seed=0), rollout=RolloutSettings(group_size=2, backend="vllm"))
    with pytest.raises(Geor1Error, match=r"rollout\.backend must be"):
        RolloutSettings(group_size=2, backend="sglang")
    with pytest.raises(Geor1Error, match=r"rollout\.vllm_is_cap must be"):
        RolloutSettings(group_size=2, vllm_is_cap=2.0)  # the hf backend has no other sampler


def test_plain_names_drop_every_wrapper():
    from geor1.model.vllm_rollout import plain_name

    assert (
        plain_name(
            "base_model.model.model.language_model.layers.0._checkpoint_wrapped_module.self_attn.q_proj"
            ".base_layer.weight"
        )
        == "model.language_model.layers.0.self_attn.q_proj.weight"
    )
    assert plain_name("model.visual.blocks.1._orig_mod.mlp.up_proj.bias") == "model.visual.blocks.1.mlp.up_proj.bias"
    assert plain_name("_fsdp_wrapped_module.lm_head.weight") == "lm_head.weight"


def _prompts(n: int):
    data = ToyPairing(n, num_candidates=2, seed=3)
    return [data[i].prompt for i in range(n)]


def _perturb(policy, lora: bool) -> None:
    with torch.no_grad():  # move the policy away from what the engine loaded at start
        for name, p in policy.model.named_parameters():
            if p.requires_grad and ("lora_B" in name or not lora):
                p.add_(0.05 * torch.randn_like(p))


def _assert_engine_holds(llm, plain: torch.nn.Module) -> None:
    """The engine's weights equal a plain (unwrapped, merged) model's, name by name."""
    want = dict(plain.named_parameters())
    got = dict(llm.model.named_parameters())
    assert set(got) == set(want)
    for name, p in want.items():
        torch.testing.assert_close(got[name], p.detach(), rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.parametrize("lora", [False, True])
def test_engine_greedy_rollout_equals_the_policy_after_a_weight_sync(fake_vllm, lora):
    from geor1.model.vllm_rollout import EXTENSION, VLLMRollout, folder_weight_names

    policy = TinyPolicy(seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.0) if lora else None).eval()
    engine = VLLMRollout(policy, chunk_mb=0.5)  # streamed in chunks of >= 0.5 MiB (the model: 2.9 MiB)
    assert engine.llm.kwargs["worker_extension_cls"] == EXTENSION and os.environ[ENV] == "0"
    assert engine.llm.kwargs["dtype"] == "float32"
    _perturb(policy, lora)
    prompts = _prompts(3)
    before = engine.generate(policy, prompts, 1, 10, do_sample=False)
    n = engine.sync_weights(policy)
    # every weight once, under the names of the checkpoint the engine loaded (the stand-in refuses any other)
    ckpt = folder_weight_names(engine.llm.kwargs["model"])
    assert n == len(ckpt) == len(engine.llm.loaded) and set(engine.llm.loaded) == ckpt
    chunks = [[t.numel() * t.element_size() for _, t in args[0]] for _, args in engine.llm.rpc_calls]
    assert len(chunks) > 1 and sum(len(c) for c in chunks) == n
    assert all(sum(c) >= 2**19 > sum(c[:-1]) for c in chunks[:-1])  # each chunk stops at the first tensor past it
    merged = copy.deepcopy(policy.model).merge_and_unload() if lora else policy.model
    _assert_engine_holds(engine.llm, merged)
    got = engine.generate(policy, prompts, 1, 10, do_sample=False)
    want = policy.generate(prompts, group_size=1, max_new_tokens=10, do_sample=False)
    assert torch.equal(got.completion_mask, want.completion_mask)
    assert torch.equal(got.completion_ids, want.completion_ids) and got.texts == want.texts
    assert torch.equal(got.truncated, want.truncated)
    assert not torch.equal(before.completion_ids, got.completion_ids)  # the sync mattered
    if lora:
        assert any("lora_" in k for k, _ in policy.model.named_parameters())  # the policy itself is untouched


def test_the_standin_refuses_unknown_names_shapes_and_dtypes(fake_vllm):
    from geor1.model.vllm_rollout import VLLMRollout

    engine = VLLMRollout(TinyPolicy(seed=0))
    w = engine.llm.model.lm_head.weight.detach().clone()
    with pytest.raises(ValueError, match="no module or parameter"):  # a module name, not the checkpoint's
        engine.llm.collective_rpc("geor1_load_weights", args=([("model.language_model.norm.weight", w[0])],))
    with pytest.raises(ValueError, match="shape"):
        engine.llm.collective_rpc("geor1_load_weights", args=([("model.norm.weight", w[0, :7])],))
    with pytest.raises(TypeError, match="dtype"):
        engine.llm.collective_rpc("geor1_load_weights", args=([("lm_head.weight", w.double())],))


@pytest.fixture
def gloo_world_of_one(tmp_path):
    """A 1-process gloo group and a CPU device mesh, so that `fully_shard` gives real DTensors."""
    from torch.distributed.device_mesh import init_device_mesh

    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def _text_loss(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float().pow(2).mean()


@pytest.mark.parametrize("lora", [False, True])
def test_sync_under_fsdp2_and_activation_checkpointing_gives_the_plain_models_weights(
    fake_vllm, gloo_world_of_one, lora
):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from geor1.model.vllm_rollout import VLLMRollout

    mesh = gloo_world_of_one
    policy = TinyPolicy(seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.0) if lora else None)
    _perturb(policy, lora)  # LoRA B != 0, so that merging matters
    plain = copy.deepcopy(policy)  # the reference: one process, no wrappers
    # wrap and shard like a run: activation checkpointing per decoder layer, fully_shard per block, then the root
    base = policy.base_model()
    layers = base.model.language_model.layers
    for i in range(len(layers)):
        layers[i] = checkpoint_wrapper(layers[i])
        fully_shard(layers[i], mesh=mesh)
    for block in base.model.visual.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(policy.model, mesh=mesh)
    names = [n for n, _ in policy.model.named_parameters()]
    assert any("_checkpoint_wrapped_module." in n for n in names)
    assert all(isinstance(p, DTensor) for p in policy.model.parameters())
    engine = VLLMRollout(policy)  # as in on_fit_start: after sharding (the start folder is gathered too)
    with pytest.raises(TypeError, match=r"plain torch\.Tensor"):  # the stand-in, like vLLM, takes no DTensor
        engine.llm.collective_rpc("geor1_load_weights", args=([("lm_head.weight", base.lm_head.weight)],))
    # one optimizer step on the sharded policy and the same step on the plain copy
    ids = torch.tensor([[5, 17, 33, 2, 9, 41]])
    for model in (policy.model, plain.model):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        _text_loss(model, ids).backward()
        opt.step()
    reference = plain.model.merge_and_unload() if lora else plain.model
    pairs = zip(engine.llm.model.parameters(), reference.parameters(), strict=False)
    differs = any(not torch.allclose(a, b) for a, b in pairs)
    assert differs  # the engine does not hold the update yet
    assert engine.sync_weights(policy) == len(dict(reference.named_parameters()))
    _assert_engine_holds(engine.llm, reference)
    # and it decodes like the plain, updated model
    plain_policy = plain if not lora else _as_plain_policy(plain, reference)
    prompts = _prompts(2)
    got = engine.generate(plain_policy, prompts, 1, 8, do_sample=False)
    want = plain_policy.generate(prompts, group_size=1, max_new_tokens=8, do_sample=False)
    assert torch.equal(got.completion_ids, want.completion_ids)


def _as_plain_policy(policy, merged_model):
    policy.model, policy.lora = merged_model.eval(), None
    return policy


def _image_tokens(policy: Policy, image) -> int:
    enc = policy.encode([Prompt("Where is this? <image>", images=[image])])
    return int((enc["input_ids"] == policy.image_token_id).sum())


def test_the_engine_sees_the_policys_image_resolution(fake_vllm, tmp_path):
    from PIL import Image

    from geor1.model.vllm_rollout import VLLMRollout

    folder = TinyPolicy(seed=0).save_pretrained(tmp_path / "model")  # its processor: up to 28*28*16 px per image
    lo, hi = 28 * 28, 28 * 28 * 6
    policy = Policy(str(folder), min_pixels=lo, max_pixels=hi)
    image = Image.new("RGB", (224, 168), (90, 120, 30))
    limits = {"size": {"shortest_edge": lo, "longest_edge": hi}}
    folder_tokens = _image_tokens(Policy(str(folder)), image)
    policy_tokens = _image_tokens(policy, image)
    assert folder_tokens != policy_tokens  # the folder's own settings would give vLLM another token count
    for model_dir in (None, str(folder)):  # the default engine folder (policy's processor), or the plain folder
        engine = VLLMRollout(policy, model_dir=model_dir)
        assert engine.llm.kwargs["mm_processor_kwargs"] == limits
        assert engine.llm.num_image_tokens(image) == policy_tokens
        _perturb(policy, lora=False)  # a policy loaded from a folder syncs under that folder's names too
        assert engine.sync_weights(policy) == len(dict(policy.model.named_parameters()))
        _assert_engine_holds(engine.llm, policy.model)
    import geor1.model.vllm_rollout as vr

    with pytest.MonkeyPatch.context() as mp:  # without the limits, the plain folder is refused, not used
        mp.setattr(vr, "pixel_limits", lambda policy: {})
        with pytest.raises(Geor1Error, match=r"image processor .* differs"):
            VLLMRollout(policy, model_dir=str(folder))


def _text_reward(completions: list[str], samples: list[dict], **context) -> list[float]:
    """A reward that varies within a group (a random tiny model earns the same real reward for every sample, and
    zero advantages would hide any weighting of the surrogate)."""
    return [float(sum(map(ord, t)) % 11) for t in completions]


@pytest.fixture
def text_reward(monkeypatch):
    from geor1.rewards.registry import REWARDS

    monkeypatch.setitem(REWARDS, "test_text", _text_reward)


def _fit(
    vllm_is_cap,
    steps: int = 2,
    rewards: dict[str, float] | None = None,
    optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3),
) -> tuple[GRPOModule, dict]:
    L.seed_everything(0)
    rollout = RolloutSettings(
        group_size=2,
        max_new_tokens=6,
        backend="vllm",
        vllm_engine={"gpu_memory_utilization": 0.3},
        vllm_is_cap=vllm_is_cap,
    )
    module = GRPOModule(
        TinyPolicy(seed=0), rollout=rollout, rewards=rewards, log_completions_every_n_steps=0, optimizer=optimizer
    )
    dm = ToyPairingDataModule(num_train=4, num_val=2, num_candidates=2, batch_size=2)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(module, datamodule=dm)
    return module, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_grpo_fit_with_vllm_backend_syncs_every_step(fake_vllm):
    module, _ = _fit(None, steps=2)
    (llm,) = fake_vllm.LLM.instances
    assert llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["logprobs_mode"] == "raw_logprobs"
    n_weights = len(dict(llm.model.named_parameters()))
    assert len(llm.loaded) == 2 * n_weights and llm.resets == 2  # one sync per optimizer step
    rollout = module._rollout(_prompts(2))  # a step later: the engine gets the weights of the 2 updates first
    assert len(llm.loaded) == 3 * n_weights
    assert rollout.completion_ids.shape[0] == 2 * 2 and len(rollout.texts) == 4  # B*G rows, grouped by prompt
    assert rollout.sample_logprobs is None  # not asked for without the IS correction
    for (name, a), b in zip(llm.model.named_parameters(), module.policy.model.parameters(), strict=True):
        assert torch.equal(a, b.detach()), name  # the engine holds the trained weights


def test_is_correction_is_one_with_the_standins_exact_logprobs_and_changes_training_when_they_differ(
    fake_vllm, text_reward, monkeypatch
):
    # plain SGD: the update is linear in the gradient (Adam's first steps are ~lr * sign(g), so float noise in a
    # gradient entry that nearly cancels would show up at full size)
    kw = dict(steps=1, rewards={"test_text": 1.0}, optimizer=lambda p: torch.optim.SGD(p, lr=0.05))
    plain, plain_metrics = _fit(None, **kw)
    tis, tis_metrics = _fit(2.0, **kw)
    (_, llm) = fake_vllm.LLM.instances
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    # the engine's sampling log-probs are the policy's (after temperature): every weight is 1
    rollout = tis._rollout(_prompts(2))
    m = rollout.completion_mask
    old = tis.policy.token_logprobs(rollout.inputs, rollout.completion_ids, m, 2, tis.rollout_settings.temperature)
    assert not torch.isnan(rollout.sample_logprobs[m]).any()
    torch.testing.assert_close(rollout.sample_logprobs[m], old.detach()[m], rtol=0, atol=1e-4)
    w = truncated_is_weights(old.detach(), rollout.sample_logprobs, 2.0)
    torch.testing.assert_close(w[m], torch.ones_like(w[m]), rtol=0, atol=1e-4)
    # so training is unchanged: same loss, same weights
    assert tis_metrics["train/loss"] == pytest.approx(plain_metrics["train/loss"], rel=0, abs=1e-5)
    for (name, a), b in zip(tis.policy.model.named_parameters(), plain.policy.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    # a sampler whose log-probs differ from the policy's (by 0.5 on every other token) changes the update
    real_generate = fake_vllm.LLM.generate

    def skewed(self, *args, **kwargs):
        outs = real_generate(self, *args, **kwargs)
        for out in outs:
            for s in out.outputs:
                for j, step in enumerate(s.logprobs or []):
                    for lp in step.values():
                        lp.logprob -= 0.5 * (j % 2)
        return outs

    monkeypatch.setattr(fake_vllm.LLM, "generate", skewed)
    skew, _ = _fit(2.0, **kw)
    assert any(
        not torch.allclose(a, b, rtol=0, atol=1e-6)
        for a, b in zip(skew.policy.model.parameters(), plain.policy.model.parameters(), strict=True)
    )
