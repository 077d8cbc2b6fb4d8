"""GRPOModule: a real fit of a few steps on the tiny policy (parameters move, every promised scalar is logged),
the reference model under LoRA and full fine-tuning, micro-batches of the real update that add up to the full
batch, and dropout off by default."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from conftest import rollout_from_texts
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from geor1 import Geor1Error
from geor1.data.sample import collate_samples
from geor1.data.toy import ToyPairing, ToyPairingDataModule
from geor1.model import LoraSpec, TinyPolicy
from geor1.objectives.grpo import GRPOModule
from geor1.objectives.grpo_math import aggregate
from geor1.objectives.grpo_settings import LossSettings, RolloutSettings

SCALARS = [
    "train/loss",
    "train/kl",
    "train/clip_ratio",
    "train/entropy",
    "train/pairing_acc",
    "rewards/total/mean",
    "rewards/total/std",
    "rewards/accuracy/mean",
    "rewards/format/mean",
    "rewards/length/mean",
    "rewards/repetition/mean",
    "completions/mean_length",
    "completions/clipped_ratio",
]


def _module(policy=None, rollout: dict | None = None, loss: dict | None = None, **kw) -> GRPOModule:
    """GRPOModule on the tiny policy with G=3, 12 new tokens, beta 0.04; `rollout` / `loss` override settings."""
    args = {"log_completions_every_n_steps": 1, "optimizer": lambda p: torch.optim.AdamW(p, lr=1e-3), **kw}
    return GRPOModule(
        policy or TinyPolicy(seed=0),
        rollout=RolloutSettings(**{"group_size": 3, "max_new_tokens": 12, **(rollout or {})}),
        loss=LossSettings(**{"beta": 0.04, **(loss or {})}),
        **args,
    )


def test_grpo_fit_moves_parameters_and_logs_every_scalar(tmp_path):
    L.seed_everything(0)
    module = _module()
    before = [p.detach().clone() for p in module.policy.parameters()]
    dm = ToyPairingDataModule(num_train=8, num_val=4, num_candidates=2, batch_size=2)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
        val_check_interval=3,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, module.policy.parameters(), strict=True))
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")))).Reload()
    tags = set(events.Tags()["scalars"])
    assert set(SCALARS) <= tags, set(SCALARS) - tags
    assert "val/pairing_acc" in tags and events.Tags()["images"] and events.Tags()["tensors"]  # text + images
    vocab = module.policy.lm_head.weight.shape[0]
    assert all(0 < e.value < math.log(vocab) for e in events.Scalars("train/entropy"))  # nats, a sampling policy
    assert module._reference is not None  # full fine-tuning with beta > 0: a frozen copy ...
    assert not any(k.startswith("_reference") for k in module.state_dict())  # ... kept out of checkpoints


def test_reference_is_the_adapter_disabled_base_under_lora():
    module = _module(policy=TinyPolicy(seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.0)))
    with torch.no_grad():
        for n, p in module.policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    sample = ToyPairing(2, 2)[0]
    rollout = module.policy.generate([sample.prompt], group_size=3, max_new_tokens=6)
    with torch.no_grad():
        with module._reference_policy() as ref:
            ref_lp = module._logprobs(ref, rollout)
        lp = module._logprobs(module.policy, rollout)
        base = TinyPolicy(seed=0)  # the same weights without the adapter
        base_lp = base.token_logprobs(rollout.inputs, rollout.completion_ids, rollout.completion_mask, 3)
    torch.testing.assert_close(ref_lp, base_lp, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(lp, ref_lp)


COMPLETIONS = [
    "<think>sea to the west</think><answer>A</answer>",
    "<answer>B</answer>",
    "B B B",
    "<think>green ground</think><answer>A</answer>",
]


def _fixed_rollout(policy, prompts, group_size, **_):
    """Completions of different lengths, fixed per prompt and sample (whatever the RNG)."""
    texts = [COMPLETIONS[(b + j) % len(COMPLETIONS)] for b in range(len(prompts)) for j in range(group_size)]
    return rollout_from_texts(policy, prompts, texts, group_size)


def _one_step(micro: int | None, aggregation: str, **loss_settings) -> list[torch.Tensor]:
    """Weights after one real `fit` step (the real `_update`, SGD lr 1, no clipping) on 4 fixed prompts."""
    L.seed_everything(0)
    loss = {"micro_batch_prompts": micro, "aggregation": aggregation, "beta": 0.1, "max_grad_norm": None}
    loss.update(loss_settings)
    module = _module(
        policy=TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32),
        loss=loss,
        log_completions_every_n_steps=0,
        rewards={"accuracy": 1.0, "format": 1.0},
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
    )
    module.policy.generate = lambda prompts, group_size=1, **kw: _fixed_rollout(module.policy, prompts, group_size)
    samples = [ToyPairing(4, 2, seed=3, image_size=28)[i] for i in range(4)]
    loader = DataLoader(samples, batch_size=4, collate_fn=collate_samples)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader)
    return [p.detach().clone() for p in module.policy.parameters()]


@pytest.mark.parametrize("aggregation", ["grpo", "dapo", "dr_grpo"])
def test_update_in_micro_batches_equals_the_whole_batch(aggregation):
    """The real `_update` on one device with micro_batch_prompts < batch (it used to crash with
    'SingleDeviceStrategy' object has no attribute 'block_backward_sync') moves the weights exactly as one pass."""
    whole = _one_step(None, aggregation)
    init = [p.detach() for p in TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32).parameters()]
    assert max(float((w - i).abs().max()) for w, i in zip(whole, init, strict=True)) > 1e-3  # the step did move them
    for micro in (1, 3):  # 4 prompts in 4 micro-batches, and in a 3 + 1 split
        parts = _one_step(micro, aggregation)
        for a, b in zip(parts, whole, strict=True):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("micro", [None, 3])
def test_gspo_update_equals_the_token_level_one_on_policy(micro):
    """mu = 1: every importance ratio is 1 at both levels, so the real `_update` with importance_level "sequence"
    (GSPO) moves the weights exactly as the token-level one (also in micro-batches); with mu = 2 the second update
    sees ratios != 1 and the levels differ."""
    token = _one_step(micro, "grpo")
    sequence = _one_step(micro, "grpo", importance_level="sequence")
    for a, b in zip(sequence, token, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    if micro is None:
        token2 = _one_step(None, "grpo", mu=2, epsilon=0.9)
        sequence2 = _one_step(None, "grpo", mu=2, epsilon=0.9, importance_level="sequence")
        assert max(float((a - b).abs().max()) for a, b in zip(sequence2, token2, strict=True)) > 1e-4


@pytest.mark.parametrize("mode", ["grpo", "dapo", "dr_grpo"])
def test_aggregate_shares_of_micro_batches_add_up(mode):
    torch.manual_seed(0)
    per_token, mask = torch.randn(6, 5), torch.rand(6, 5) > 0.3
    whole = aggregate(per_token, mask, mode, max_len=8)
    tokens = mask.sum()
    parts = sum(
        aggregate(per_token[r], mask[r], mode, max_len=8, num_rows=6, num_tokens=tokens)
        for r in (slice(0, 2), slice(2, 3), slice(3, 6))
    )
    torch.testing.assert_close(parts, whole)
    if mode == "dr_grpo":  # a constant normaliser: N * max_len, whatever the padded width
        torch.testing.assert_close(whole, (per_token * mask).sum() / (6 * 8))


def test_dropout_is_off_in_the_policy_by_default():
    """With LoRA dropout 0.5, two training-mode log-prob passes of the same weights agree (old == new when mu > 1)
    only with disable_dropout (the default)."""
    sample = ToyPairing(2, 2)[0]
    lps = {}
    for disable in (True, False):
        module = _module(policy=TinyPolicy(seed=0, lora=LoraSpec(r=4, alpha=8, dropout=0.5)), disable_dropout=disable)
        with torch.no_grad():  # LoRA B starts at zero: give the adapter (and its dropout) an effect
            for n, p in module.policy.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
        module.policy.train()
        rollout = module.policy.generate([sample.prompt], group_size=3, max_new_tokens=6)
        with torch.no_grad():
            lps[disable] = [module._logprobs(module.policy, rollout) for _ in range(2)]
            module.policy.eval()
            lps[disable].append(module._logprobs(module.policy, rollout))  # no dropout at all
        if disable:
            assert all(m.p == 0.0 for m in module.policy.modules() if isinstance(m, torch.nn.Dropout))
    first, second, evaluated = lps[True]
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first, evaluated, atol=1e-6, rtol=1e-5)
    first, second, _ = lps[False]
    assert not torch.allclose(first, second)  # dropout on: the same weights give other log-probs


@pytest.mark.parametrize(
    ("group", "field", "value"),
    [
        ("rollout", "group_size", 1),
        ("rollout", "max_new_tokens", 0),
        ("rollout", "temperature", 0.0),
        ("rollout", "top_p", 0.0),
        ("rollout", "top_p", 1.5),
        ("rollout", "top_k", 0),
        ("rollout", "backend", "sglang"),
        ("rollout", "vllm_is_cap", 2.0),  # the hf backend has no other sampler to correct for
        ("rollout", "max_dynamic_batches", 0),
        ("loss", "beta", -0.1),
        ("loss", "kl_estimator", "k2"),
        ("loss", "epsilon", 0.0),
        ("loss", "epsilon", 1.0),
        ("loss", "epsilon_high", 0.0),
        ("loss", "aggregation", "mean"),
        ("loss", "advantage_eps", -1e-4),
        ("loss", "mu", 0),
        ("loss", "micro_batch_prompts", 0),
        ("loss", "max_grad_norm", 0.0),
        ("loss", "importance_level", "seq"),
    ],
)
def test_bad_settings_are_refused_naming_their_field(group, field, value):
    """Every setting is validated once, in its dataclass, with an error that names `group.field`."""
    cls = RolloutSettings if group == "rollout" else LossSettings
    with pytest.raises(Geor1Error, match=rf"{group}\.{field} must be"):
        cls(**{field: value})


def test_settings_defaults_are_the_geo_r1_recipe():
    r, s = RolloutSettings(), LossSettings()
    assert (r.group_size, r.max_new_tokens, r.temperature, r.top_p, r.top_k) == (8, 2048, 1.0, 1.0, None)
    assert (r.backend, r.share_prefix) == ("hf", True)
    assert (s.beta, s.kl_estimator, s.epsilon, s.epsilon_high, s.aggregation) == (0.04, "k3", 0.2, None, "grpo")
    assert (s.mu, s.scale_rewards, s.max_grad_norm, s.micro_batch_prompts) == (1, True, 1.0, None)
    module = GRPOModule(TinyPolicy(seed=0))
    assert module.rollout_settings == r and module.loss_settings == s
    assert module.hparams.rollout["group_size"] == 8 and module.hparams.loss["beta"] == 0.04  # plain dicts
    with pytest.raises(TypeError, match="takes a RolloutSettings"):  # not a dict that would be half-read
        GRPOModule(TinyPolicy(seed=0), rollout={"group_size": 4})


def test_group_of_one_and_unknown_rewards_are_rejected():
    with pytest.raises(Geor1Error, match=r"rollout\.group_size must be >= 2"):
        _module(rollout={"group_size": 1})
    with pytest.raises(Geor1Error, match="unknown reward"):
        _module(rewards={"nope": 1.0})


def test_top_k_reaches_the_sampler_and_truncation_is_announced(caplog):
    """`top_k` is passed to every rollout; truncated sampling (top_p < 1 or top_k) is said to be slightly off-policy;
    top_k < 1 is an error."""
    with pytest.raises(Geor1Error, match=r"rollout\.top_k must be >= 1"):
        _module(rollout={"top_k": 0})
    with caplog.at_level("WARNING"):
        module = _module(rollout={"top_k": 3})
    assert "off-policy" in caplog.text
    seen = {}
    module.policy.generate = lambda prompts, **kw: seen.update(kw)
    module._rollout([ToyPairing(1, 2)[0].prompt])
    assert seen["top_k"] == 3 and seen["top_p"] == 1.0


def test_sharding_settings_without_fsdp2_are_announced(caplog):
    """FSDP2 settings in a single-device or DDP run would be silently off: a warning names them."""
    from geor1.objectives.sharding import ShardingSpec, warn_unused_sharding

    with caplog.at_level("WARNING"):
        warn_unused_sharding(ShardingSpec())
    assert caplog.text == ""
    with caplog.at_level("WARNING"):
        warn_unused_sharding(ShardingSpec(mixed_precision=True))
    assert "mixed_precision=True" in caplog.text and "FSDP2Strategy" in caplog.text


# ---------------------------------------------------------------------- dynamic sampling (DAPO)
INFORMATIVE = ["<think>sea to the west</think><answer>A</answer>", "<answer>B</answer>", "B B B"]  # one right, K=2
FLAT = ["<answer>A</answer>"] * 3  # the same completion three times: equal rewards, zero advantage


def _dynamic_run(
    batches: list[list[tuple[int, list[str]]]], *, dynamic: bool = True, max_batches: int = 8, updates=None
):
    """A real `fit` over `batches` (each a list of (ToyPairing index, its G=3 completion texts)), SGD lr 1, with the
    accuracy reward only -> (module, [(global_step, weights)] after each batch). `updates`: a list that gets each
    `_update`'s (rollout texts, old log-probs)."""
    L.seed_everything(0)
    module = _module(
        policy=TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32),
        rollout={"dynamic_sampling": dynamic, "max_dynamic_batches": max_batches},
        loss={"beta": 0.1, "max_grad_norm": None},
        log_completions_every_n_steps=0,
        rewards={"accuracy": 1.0},
        optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
    )
    data = ToyPairing(16, 2, seed=3, image_size=28)
    script = iter(batches)

    def generate(prompts, group_size=1, **_):
        texts = [t for _, group in next(script) for t in group]
        return rollout_from_texts(module.policy, prompts, texts, group_size)

    module.policy.generate = generate
    if updates is not None:
        real_update = module._update

        def spy(rollout, advantages, old_lp, ref_lp, with_entropy=False):
            updates.append((list(rollout.texts), None if old_lp is None else old_lp.clone()))
            return real_update(rollout, advantages, old_lp, ref_lp, with_entropy)

        module._update = spy
    samples = [[data[i] for i, _ in b] for b in batches]
    seen: list[tuple[int, list[torch.Tensor]]] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            seen.append((trainer.global_step, [p.detach().clone() for p in pl_module.policy.parameters()]))

    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(module, train_dataloaders=DataLoader(samples, batch_size=None, collate_fn=lambda b: b))
    return module, seen


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-4)


def test_dynamic_sampling_skips_flat_batches_and_trains_on_the_next_informative_groups():
    """A batch whose groups all have equal rewards makes no step; the next batch's informative groups are trained
    on, exactly as a plain step on that batch alone."""
    init = [p.detach() for p in TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32).parameters()]
    flat, good = [(0, FLAT), (1, FLAT)], [(2, INFORMATIVE), (3, INFORMATIVE)]
    module, seen = _dynamic_run([flat, good])
    assert [step for step, _ in seen] == [0, 1]
    _same(seen[0][1], init)  # no step after the flat batch
    _, plain = _dynamic_run([good], dynamic=False)
    _same(seen[1][1], plain[0][1])
    assert max(float((w - i).abs().max()) for w, i in zip(plain[0][1], init, strict=True)) > 1e-3
    assert module._buffer == []


def test_dynamic_sampling_buffers_groups_across_batches_and_keeps_the_extras():
    """Batch 1 has one informative group of 2 (no step); batch 2 has two: the step trains on batch 1's and batch
    2's first one, exactly as a plain step on those two groups, and batch 2's second waits, with the log-probs of
    the policy that sampled it."""
    b1 = [(0, FLAT), (4, INFORMATIVE)]
    b2 = [(5, INFORMATIVE[::-1]), (6, INFORMATIVE)]
    module, seen = _dynamic_run([b1, b2])
    assert [step for step, _ in seen] == [0, 1]
    _, plain = _dynamic_run([[(4, INFORMATIVE), (5, INFORMATIVE[::-1])]], dynamic=False)
    _same(seen[1][1], plain[0][1])
    (left,) = module._buffer
    assert left.sample.key == ToyPairing(16, 2, seed=3, image_size=28)[6].key and left.old_logprobs is not None
    before = TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32)  # the policy that sampled it
    rollout = rollout_from_texts(before, [left.sample.prompt], INFORMATIVE, 3)
    with torch.no_grad():
        expected = before.token_logprobs(rollout.inputs, rollout.completion_ids, rollout.completion_mask, 3)
    torch.testing.assert_close(left.old_logprobs, expected, atol=1e-5, rtol=1e-5)
    # a third batch: the step trains on the left-over group (its ratio against the policy that sampled it) and the
    # new informative one (sampled by the current policy: its old log-probs are the current ones)
    updates: list = []
    module, seen = _dynamic_run([b1, b2, [(7, INFORMATIVE[1:] + INFORMATIVE[:1]), (0, FLAT)]], updates=updates)
    assert [step for step, _ in seen] == [0, 1, 2] and module._buffer == []
    (first_texts, first_old), (texts, old) = updates
    assert first_texts == INFORMATIVE + INFORMATIVE[::-1]  # groups 4 and 5
    assert first_old is None  # mu = 1, nothing stale: the old policy is the current one
    assert texts == INFORMATIVE + INFORMATIVE[1:] + INFORMATIVE[:1] and old is not None
    width = expected.shape[1]
    torch.testing.assert_close(old[:3, :width], expected, atol=1e-5, rtol=1e-5)
    after = TinyPolicy(seed=0, hidden_size=64, vision_hidden_size=32)  # the policy after the first step
    with torch.no_grad():
        for p, w in zip(after.parameters(), seen[1][1], strict=True):
            p.copy_(w)
    seventh = rollout_from_texts(after, [ToyPairing(16, 2, seed=3, image_size=28)[7].prompt], texts[3:], 3)
    with torch.no_grad():
        current = after.token_logprobs(seventh.inputs, seventh.completion_ids, seventh.completion_mask, 3)
    torch.testing.assert_close(old[3:, : current.shape[1]], current, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the left-over group under the current policy: other log-probs (the ratio is not 1)
        now = after.token_logprobs(rollout.inputs, rollout.completion_ids, rollout.completion_mask, 3)
    assert float((now - expected).abs().max()) > 1e-3


def test_dynamic_sampling_steps_on_what_it_has_after_the_cap(caplog):
    """max_dynamic_batches=2: two batches without enough informative groups -> a step on the one buffered group
    (warned); two flat batches -> a step on the latest batch (zero advantages: only the KL term moves it),
    warned."""
    b1, b2 = [(0, FLAT), (1, INFORMATIVE)], [(2, FLAT), (3, FLAT)]
    with caplog.at_level("WARNING"):
        _, seen = _dynamic_run([b1, b2, b2, b2], max_batches=2)
    assert [step for step, _ in seen] == [0, 1, 1, 2]
    assert "its 1 buffered groups" in caplog.text and "its latest batch" in caplog.text
    _, plain = _dynamic_run([[(1, INFORMATIVE)]], dynamic=False)
    _same(seen[1][1], plain[0][1])


def test_dynamic_sampling_logs_kept_and_dropped_groups(tmp_path):
    module = _module(rollout={"dynamic_sampling": True}, rewards={"accuracy": 1.0}, log_completions_every_n_steps=0)
    module.policy.generate = lambda prompts, group_size=1, **_: rollout_from_texts(
        module.policy, prompts, FLAT + INFORMATIVE, group_size
    )
    data = ToyPairing(4, 2, seed=3, image_size=28)
    logger = L.pytorch.loggers.TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=logger,
        enable_progress_bar=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
    )
    loader = DataLoader([data[i] for i in range(4)], batch_size=2, collate_fn=collate_samples)
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1  # 1 informative group per batch of 2: a step after the second batch
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")))).Reload()
    kept = [e.value for e in events.Scalars("rollout/kept_groups")]
    dropped = [e.value for e in events.Scalars("rollout/dropped_groups")]
    assert kept and set(kept) == {1.0} and set(dropped) == {1.0}
    assert "train/loss" in events.Tags()["scalars"]


def test_dynamic_sampling_under_ddp_steps_on_every_rank_together(tmp_path):
    """2 CPU processes (gloo) whose ranks hold different numbers of informative groups: no rank steps until every
    rank has enough (a rank stepping alone would hang in the gradient all-reduce), then both step together, to the
    same weights as one process's plain step on the 4 groups trained on; rank 0's 2 extra groups wait, with the
    log-probs of the policy that sampled them."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("ddp_dynamic_run.py")
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parent / "netguard")]),
    )
    runs = {}
    for devices in (2, 1):
        out = tmp_path / f"d{devices}"
        res = subprocess.run(
            [sys.executable, str(script), str(out), str(devices)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
        assert res.returncode == 0, res.stderr[-3000:]
        runs[devices] = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(devices)]
    two, (one,) = runs[2], runs[1]
    assert [r["steps"] for r in two] == [[0, 1], [0, 1]] and one["steps"] == [1]
    assert two[0]["buffered"] == [ToyPairing(8, 2, seed=3)[i].key for i in (4, 6)] and all(two[0]["buffered_old"])
    assert two[1]["buffered"] == []
    assert two[0]["delta_head"] == pytest.approx(two[1]["delta_head"], abs=1e-7)
    assert one["delta_norm"] > 0
    assert two[0]["delta_head"] == pytest.approx(one["delta_head"], abs=2e-6)
    assert two[0]["delta_norm"] == pytest.approx(one["delta_norm"], rel=1e-4)


def test_dynamic_sampling_checkpoint_records_the_buffer_and_resume_says_it_is_dropped(caplog):
    """The buffered groups (prompts with images) are not saved: the checkpoint records how many and their keys, and
    a resume warns that they will not be trained on, then starts with an empty buffer."""
    from geor1.objectives.dynamic_sampling import split_groups

    module = _module(rollout={"dynamic_sampling": True})
    samples = [ToyPairing(4, 2, seed=3, image_size=28)[i] for i in range(2)]
    rollout = rollout_from_texts(module.policy, [s.prompt for s in samples], FLAT + INFORMATIVE, 3)
    module._buffer = split_groups(samples, rollout, {"accuracy": [1.0] * 6}, [1.0] * 6)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["dynamic_sampling"] == {"buffered_groups": 2, "keys": [s.key for s in samples]}
    resumed = _module(rollout={"dynamic_sampling": True})
    with caplog.at_level("WARNING"):
        resumed.on_load_checkpoint(checkpoint)
    assert "2 informative groups" in caplog.text and samples[1].key in caplog.text and resumed._buffer == []
    caplog.clear()
    with caplog.at_level("WARNING"):
        resumed.on_load_checkpoint({"dynamic_sampling": {"buffered_groups": 0, "keys": []}})
    assert caplog.text == ""
