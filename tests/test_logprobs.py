"""Tiled LM-head log-probs and SFT loss equal the plain full-logits computation: values and gradients."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from geor1.model.logprobs import (
    IGNORE_INDEX,
    entropy_from_logits,
    tiled_lm_loss,
    tiled_token_logprobs,
    tiled_token_logprobs_and_entropy,
)
from geor1.objectives.sft import masked_lm_loss

H, V = 16, 37


def _setup(dtype: torch.dtype, bias: bool, n: int = 3, t: int = 11, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(H, V, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, H, generator=g, dtype=dtype) * 2 / H**0.5)  # logits ~ N(0, 4)
        if bias:
            head.bias.copy_(torch.randn(V, generator=g, dtype=dtype))
    hidden = torch.randn(n, t, H, generator=g, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, V, (n, t), generator=g)
    return head, hidden, ids


def _grads(out: torch.Tensor, hidden: torch.Tensor, head: nn.Module, weight: torch.Tensor):
    """Gradients of sum(out * weight) w.r.t. hidden and every head parameter."""
    params = [hidden, *head.parameters()]
    return torch.autograd.grad((out * weight).sum(), params)


def _reference_logprobs(hidden, head, ids, temperature):
    logits = head(hidden).float() / temperature  # [N, T, V]
    return torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tile", [1, 4, 11, 33, 64])  # 4 and 64 do not divide N*T = 33; 11 and 33 do
# float32 "to 1e-6": atol 1e-6 + rtol 1e-6 (a matmul over 1 row vs 33 rows already differs by an ulp of the logits)
def test_tiled_token_logprobs_equal_full_logits(dtype, tol, bias, temperature, tile):
    head, hidden, ids = _setup(dtype, bias)
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) > 0.3  # GRPO's completion mask
    weight = torch.randn(ids.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weight = weight * mask / mask.sum()  # a token-mean loss, as GRPO's: masked positions carry no loss

    ref = _reference_logprobs(hidden, head, ids, temperature)
    got = tiled_token_logprobs(hidden, head, ids, temperature=temperature, tile=tile)
    assert got.shape == ids.shape and got.dtype == torch.float32
    # values are float32 whatever the input dtype (float64 inputs: the float64 log-probs rounded once)
    torch.testing.assert_close(got * mask, ref.float() * mask, atol=1e-6, rtol=1e-6)
    g_ref = _grads(ref.to(weight.dtype), hidden, head, weight)
    g_got = _grads(got.to(weight.dtype), hidden, head, weight)
    for a, b in zip(g_got, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_tiled_token_logprobs_float64_is_exact_before_the_float32_cast():
    # the float32 output is the float64 computation rounded once: no error larger than one float32 rounding
    head, hidden, ids = _setup(torch.float64, bias=True, n=2, t=9)
    ref = _reference_logprobs(hidden, head, ids, 1.3)
    got = tiled_token_logprobs(hidden, head, ids, temperature=1.3, tile=4)
    assert torch.equal(got, ref.float())


def test_tiled_token_logprobs_without_grad_and_empty():
    head, hidden, ids = _setup(torch.float32, bias=False)
    with torch.no_grad():
        got = tiled_token_logprobs(hidden, head, ids, tile=5)
        ref = _reference_logprobs(hidden, head, ids, 1.0)
    assert not got.requires_grad
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-6)
    empty = tiled_token_logprobs(hidden[:, :0], head, ids[:, :0])
    assert empty.shape == (3, 0)
    with pytest.raises(ValueError, match="disagree"):
        tiled_token_logprobs(hidden, head, ids[:, :-1])


def test_tiled_token_logprobs_never_computes_more_than_a_tile_of_logits():
    """The head sees `tile` rows at a time, in the forward and again (recomputed) in backward."""
    head, hidden, ids = _setup(torch.float32, bias=True)
    rows: list[int] = []
    head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    got = tiled_token_logprobs(hidden, head, ids, tile=8)
    forward_rows = list(rows)
    got.sum().backward()
    assert forward_rows == [8, 8, 8, 8, 1]  # 33 positions
    # recomputed tile by tile in backward (last tile first), through the module (hooks fire)
    assert rows[len(forward_rows) :] == forward_rows[::-1]
    assert head.weight.grad is not None and hidden.grad is not None


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("tile", [1, 4, 33, 64])
def test_tiled_entropy_equals_categorical_entropy(temperature, tile):
    """The per-position entropy from the tiles equals torch's Categorical entropy of the full temperature-scaled
    logits; the log-probs and their gradients are those of `tiled_token_logprobs`; the entropy has no gradient."""
    head, hidden, ids = _setup(torch.float64, bias=True)
    ref = torch.distributions.Categorical(logits=head(hidden).float() / temperature).entropy()  # [N, T]
    lp, ent = tiled_token_logprobs_and_entropy(hidden, head, ids, temperature=temperature, tile=tile)
    assert ent.shape == ids.shape and ent.dtype == torch.float32 and not ent.requires_grad
    torch.testing.assert_close(ent, ref.detach(), atol=1e-6, rtol=1e-6)
    assert float(ent.min()) > 0 and float(ent.max()) < math.log(V)
    plain = tiled_token_logprobs(hidden, head, ids, temperature=temperature, tile=tile)
    assert torch.equal(lp, plain)
    weight = torch.randn(ids.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for a, b in zip(
        _grads(lp.double(), hidden, head, weight), _grads(plain.double(), hidden, head, weight), strict=True
    ):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # the untiled (full-logits) path, chunked over rows, and -inf logits (a masked vocabulary entry) add 0
    logits = head(hidden).detach() / temperature
    torch.testing.assert_close(entropy_from_logits(logits, chunk=2), ref.detach(), atol=1e-6, rtol=1e-6)
    logits[..., 0] = float("-inf")
    masked = torch.distributions.Categorical(logits=logits.float()).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), masked, atol=1e-6, rtol=1e-6)
    assert entropy_from_logits(logits[:, :0]).shape == (3, 0)


def test_entropy_by_hand():
    """Uniform over V: log V; one-hot (other logits -inf): 0."""
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [5.0, float("-inf"), float("-inf"), float("-inf")]]])
    torch.testing.assert_close(entropy_from_logits(logits), torch.tensor([[math.log(4), 0.0]]))


def test_policy_entropy_is_the_same_tiled_and_untiled():
    """`Policy.token_logprobs_and_entropy` with LM-head tiles and with full logits, shared prefix or not: the same
    log-probs as `token_logprobs` and the same entropies, zero on padding."""
    from geor1.data.toy import ToyPairing
    from geor1.model import TinyPolicy

    prompts = [ToyPairing(2, 2)[i].prompt for i in range(2)]
    results = []
    for tile in (5, None):
        policy = TinyPolicy(seed=0, logprob_tile=tile)
        torch.manual_seed(0)
        rollout = policy.generate(prompts, group_size=2, max_new_tokens=7)
        args = (rollout.inputs, rollout.completion_ids, rollout.completion_mask, 2, 0.8)
        with torch.no_grad():
            for share in (True, False):
                lp, ent = policy.token_logprobs_and_entropy(*args, share_prefix=share)
                torch.testing.assert_close(lp, policy.token_logprobs(*args, share_prefix=share))
                results.append(ent)
    mask = rollout.completion_mask
    assert float((results[0] * ~mask).abs().max()) == 0.0 and float(results[0][mask].min()) > 0
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], atol=1e-5, rtol=1e-5)


def _labels(b: int, length: int, seed: int = 3) -> torch.Tensor:
    """Prompt positions masked (varying prompt lengths), a response, then right padding masked."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.full((b, length), IGNORE_INDEX, dtype=torch.long)
    for i in range(b):
        start = 2 + i
        stop = length - i
        labels[i, start:stop] = torch.randint(0, V, (stop - start,), generator=g)
    return labels


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("tile", [1, 5, 7, 256])
def test_tiled_lm_loss_equals_masked_lm_loss(dtype, tol, bias, tile):
    head, hidden, _ = _setup(dtype, bias, n=3, t=12)
    labels = _labels(3, 12)
    ref_loss, ref_correct, ref_n = masked_lm_loss(head(hidden), labels)
    loss, correct, n = tiled_lm_loss(hidden, head, labels, tile=tile)
    assert int(n) == int(ref_n) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    assert int(correct) == int(ref_correct)
    # masked_lm_loss computes in float32 whatever the input dtype; so does the tiled loss
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    params = [hidden, *head.parameters()]
    for a, b in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref_loss, params), strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


def test_tiled_lm_loss_by_hand_and_with_no_labels():
    # vocab 2, hidden 2 with an identity head: logits = hidden; only position 1's logits predict a label
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    hidden = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [5.0, 5.0]]], requires_grad=True)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1]])
    loss, correct, n = tiled_lm_loss(hidden, head, labels)
    torch.testing.assert_close(loss, -torch.log_softmax(torch.tensor([0.0, 2.0]), -1)[1])
    assert (int(correct), int(n)) == (1, 1)
    loss, correct, n = tiled_lm_loss(hidden, head, torch.full_like(labels, IGNORE_INDEX))
    assert (float(loss.detach()), int(correct), int(n)) == (0.0, 0, 0)
    loss.backward()  # still part of the graph
    assert hidden.grad is not None and float(hidden.grad.abs().sum()) == 0.0


def test_tiled_lm_loss_runs_the_head_on_labelled_positions_only():
    head, hidden, _ = _setup(torch.float32, bias=True, n=3, t=12)
    labels = _labels(3, 12)
    rows: list[int] = []
    head.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[0]))
    tiled_lm_loss(hidden, head, labels, tile=100)
    assert rows == [int((labels[:, 1:] != IGNORE_INDEX).sum())]


def test_sft_module_loss_equals_masked_lm_loss_on_the_tiny_policy():
    """SFTModule's tiled loss over `final_hidden` + `lm_head` equals the old full-logits `masked_lm_loss`: values,
    token accuracy and every parameter's gradient (two prompts with images of different sizes, padding)."""
    import numpy as np
    from PIL import Image

    from geor1.data.sample import ChatSample, Prompt
    from geor1.model import TinyPolicy
    from geor1.objectives.sft import SFTModule

    rng = np.random.default_rng(0)

    def image(w: int, h: int) -> Image.Image:
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    batch = [
        ChatSample(
            "a", Prompt("Where is this? <image>", [image(56, 56)]), response="<think>coast</think><answer>A</answer>"
        ),
        ChatSample(
            "b",
            Prompt("Ground: <image> tile: <image>", [image(84, 56), image(56, 112)]),
            response="<think>desert, arid</think><answer>B</answer> and more words to pad",
        ),
    ]
    policy = TinyPolicy(seed=0, hidden_size=64)
    module = SFTModule(policy, loss_tile=5)
    params = [p for p in policy.parameters() if p.requires_grad]

    tiled = module._step(batch, "val")  # the module's own loss path (logging outside a Trainer is a no-op)
    g_tiled = torch.autograd.grad(tiled, params)
    inputs, labels = policy.encode_sft([s.prompt for s in batch], [s.response for s in batch], module.max_length)
    ref, ref_correct, ref_n = masked_lm_loss(policy(**inputs, use_cache=False).logits, labels)
    g_ref = torch.autograd.grad(ref, params)
    torch.testing.assert_close(tiled, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(g_tiled, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    _, correct, n = tiled_lm_loss(policy.final_hidden(inputs), policy.lm_head, labels, tile=5)
    assert (int(correct), int(n)) == (int(ref_correct), int(ref_n)) and int(n) > 20


def test_peak_memory_gb_grows_with_an_allocation_and_is_logged_every_step(tmp_path):
    import lightning as L

    from geor1.objectives.memory import log_peak_memory, peak_memory_gb

    # ru_maxrss is a lifetime peak, which earlier tests may have raised: measure in a fresh process
    # (imports may have peaked above the current RSS: allocate 2 GiB on top of the current RSS, above that peak)
    code = (
        "import torch; from geor1.objectives.memory import peak_memory_gb as p; "
        "rss = [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmRSS:')][0] * 1024 / 1e9; "
        "big = torch.ones(512, 1024, 1024); print(rss, p('cpu'), float(big.sum()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    current, after, total = map(float, out)
    # 2 GiB = 2.15 GB, touched: the peak is the RSS before it plus the tensor
    assert abs(after - (current + 2.147)) < 0.25 and total == 512 * 1024 * 1024
    after = peak_memory_gb("cpu")

    seen: list[float] = []

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            loss = self.layer(batch[0]).pow(2).mean()
            seen.append(log_peak_memory(self, batch_size=2))
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            logged.append(float(trainer.callback_metrics["memory/peak_gb"]))

    logged: list[float] = []
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(6, 2)), batch_size=2)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
        callbacks=[Record()],
    )
    trainer.fit(Tiny(), data)
    assert len(logged) == 3 and logged == pytest.approx(seen) and min(seen) >= after  # logged: float32
