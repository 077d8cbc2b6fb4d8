"""GRPOModule: a real fit of a few steps on the tiny policy (parameters move, every promised scalar is logged),
the reference model under LoRA and full fine-tuning, and micro-batches that add up to the full batch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from geor1 import Geor1Error
from geor1.data.toy import ToyPairing, ToyPairingDataModule
from geor1.model import LoraSpec, TinyPolicy
from geor1.objectives.grpo import GRPOModule

SCALARS = ["train/loss", "train/kl", "train/clip_ratio", "train/pairing_acc", "rewards/total/mean",
           "rewards/total/std", "rewards/accuracy/mean", "rewards/format/mean", "rewards/length/mean",
           "rewards/repetition/mean", "completions/mean_length", "completions/clipped_ratio"]


def _module(**kw) -> GRPOModule:
    args = dict(num_generations=3, max_new_tokens=12, beta=0.04, log_completions_every_n_steps=1,
                optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    args.update(kw)
    return GRPOModule(kw.pop("policy", None) or TinyPolicy(seed=0), **{k: v for k, v in args.items()
                                                                       if k != "policy"})


def test_grpo_fit_moves_parameters_and_logs_every_scalar(tmp_path):
    L.seed_everything(0)
    module = _module()
    before = [p.detach().clone() for p in module.policy.parameters()]
    dm = ToyPairingDataModule(num_train=8, num_val=4, num_candidates=2, batch_size=2)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=1,
                        val_check_interval=3, log_every_n_steps=1)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, module.policy.parameters()))
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert set(SCALARS) <= tags, set(SCALARS) - tags
    assert "val/pairing_acc" in tags and events.Tags()["images"] and events.Tags()["tensors"]  # text + images
    assert module._reference is not None  # full fine-tuning with beta > 0: a frozen copy ...
    assert not any(k.startswith("_reference") for k in module.state_dict())  # ... kept out of checkpoints


def test_reference_is_the_adapter_disabled_base_under_lora():
    module = _module(policy=TinyPolicy(seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.0)))
    with torch.no_grad():
        for n, p in module.policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    sample = ToyPairing(2, 2)[0]
    rollout = module.policy.generate([sample.prompt], num_samples=3, max_new_tokens=6)
    with torch.no_grad():
        with module._reference_policy() as ref:
            ref_lp = module._logprobs(ref, rollout)
        lp = module._logprobs(module.policy, rollout)
        base = TinyPolicy(seed=0)  # the same weights without the adapter
        base_lp = base.token_logprobs(rollout.inputs, rollout.completion_ids, rollout.completion_mask, 3)
    torch.testing.assert_close(ref_lp, base_lp, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lp, ref_lp)


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_add_up_to_the_full_batch(aggregation):
    torch.manual_seed(0)
    samples = [ToyPairing(4, 2)[i] for i in range(4)]
    grads = []
    for micro in (None, 1):
        module = _module(micro_batch_prompts=micro, beta=0.0, loss_aggregation=aggregation)
        trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_progress_bar=False)
        module.trainer = trainer
        trainer.strategy.connect(module)
        torch.manual_seed(1)
        rollout = module.policy.generate([s.prompt for s in samples], num_samples=3, max_new_tokens=8)
        adv = torch.linspace(-1, 1, 12)
        module.policy.zero_grad()
        lp = module._logprobs(module.policy, rollout) if micro is None else None
        total = 0.0
        step = micro or 4
        for start in range(0, 4, step):
            prompts = slice(start, start + step)
            rows = slice(start * 3, (start + step) * 3)
            part = module._logprobs(module.policy, rollout, rows, prompts if micro else None)
            per_token = -(torch.exp(part - part.detach()) * adv[rows, None])
            loss = module._aggregate_part(per_token, rollout.completion_mask[rows], 12,
                                          rollout.completion_mask.sum())
            loss.backward()
            total += float(loss)
        grads.append(torch.cat([p.grad.flatten() for p in module.policy.parameters() if p.grad is not None]))
        del lp
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_group_of_one_is_rejected():
    with pytest.raises(Geor1Error, match="num_generations >= 2"):
        _module(num_generations=1)
    with pytest.raises(Geor1Error, match="unknown reward"):
        _module(rewards={"nope": 1.0})
