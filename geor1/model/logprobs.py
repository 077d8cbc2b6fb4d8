"""Token log-probabilities and the SFT loss without materialising [N, T, V] logits.

At Qwen's vocabulary (151,936) the logits of a GRPO micro-batch (G=8 completions of 1,024 tokens) are 5 GB in
float32, and a plain `log_softmax` + backward holds several copies of them. Here the LM head runs on tiles of
`tile` token positions; each tile's logits give the chosen token's log-prob and the log-sum-exp and are dropped,
then recomputed in backward (non-reentrant `torch.utils.checkpoint`). Peak memory is then a few tiles' logits,
whatever N and T are, and values and gradients equal the full-logits computation (tests/test_logprobs.py).

The same tiles optionally give each position's entropy of the full (temperature-scaled) next-token distribution,
H = -sum_v p_v log p_v, from the tile's log-softmax, with no gradient (a logged diagnostic, `train/entropy`).

The head is always called as a module, `head(h)`, never through `head.weight`, so that FSDP2 unsharding and PEFT
(LoRA on the head) hooks fire, in the forward and in the recomputation alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _entropy_of_log_softmax(log_p: Tensor) -> Tensor:
    """[..., V] normalised log-probabilities -> [...] entropy -sum p log p, without gradient (p = 0 adds 0, also
    where log p is -inf)."""
    with torch.no_grad():
        p = log_p.exp()
        return -(p * torch.where(p > 0, log_p, torch.zeros_like(log_p))).sum(-1)


def entropy_from_logits(logits: Tensor, chunk: int = 8) -> Tensor:
    """Entropy of softmax(logits) over the last dimension, in float32, `chunk` rows of the first dimension at a time,
    without gradient (the full-logits path of `Policy.token_logprobs`; the tiled path gets it per tile).

    logits: [N, ..., V] -> [N, ...] float32.
    """
    with torch.no_grad():
        out = [_entropy_of_log_softmax(torch.log_softmax(lg.float(), dim=-1)) for lg in logits.split(chunk)]
        return torch.cat(out) if out else logits.new_zeros(logits.shape[:-1], dtype=torch.float32)


def _tile_logprobs(h: Tensor, ids: Tensor, head: nn.Module, temperature: float, entropy: bool = False):
    """h: [n, H], ids: [n] -> [n] float32 log softmax(head(h) / temperature)[ids], and with `entropy` also the [n]
    entropies of those distributions (no gradient)."""
    logits = head(h).float()  # [n, V]
    if temperature != 1.0:
        logits = logits / temperature
    log_p = torch.log_softmax(logits, dim=-1)
    picked = log_p.gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [n]
    return (picked, _entropy_of_log_softmax(log_p)) if entropy else picked


def _run_tiles(fn, tiles: list[tuple[Tensor, ...]]) -> list:
    """fn over the tiles; under autograd each tile keeps only its inputs and is recomputed in backward."""
    if not torch.is_grad_enabled():
        return [fn(*t) for t in tiles]
    return [checkpoint(fn, *t, use_reentrant=False) for t in tiles]


def tiled_token_logprobs(
    hidden: Tensor, head: nn.Module, ids: Tensor, temperature: float = 1.0, tile: int = 32
) -> Tensor:
    """log p(ids) under softmax(head(hidden) / temperature), one tile of `tile` positions at a time.

    hidden: [N, T, H] final (normed) hidden states at the positions that predict `ids`; ids: [N, T] long
    -> [N, T] float32 log-probabilities (differentiable w.r.t. `hidden` and the head's parameters).
    Positions are taken row-major over N*T, so at most [tile, V] logits exist at once (per tile in backward too).
    """
    return _tiled(hidden, head, ids, temperature, tile, entropy=False)[0]


def tiled_token_logprobs_and_entropy(
    hidden: Tensor, head: nn.Module, ids: Tensor, temperature: float = 1.0, tile: int = 32
) -> tuple[Tensor, Tensor]:
    """`tiled_token_logprobs` and, from the same tiles, the entropy of each position's full next-token distribution
    softmax(head(hidden) / temperature) -> ([N, T] float32 log-probs, [N, T] float32 entropies without gradient).

    Under autograd each tile is recomputed in backward (its entropy too: one more exp and sum over its [tile, V]
    log-probs); no [N, T, V] tensor exists at any time.
    """
    lp, ent = _tiled(hidden, head, ids, temperature, tile, entropy=True)
    assert ent is not None
    return lp, ent


def _tiled(
    hidden: Tensor, head: nn.Module, ids: Tensor, temperature: float, tile: int, entropy: bool
) -> tuple[Tensor, Tensor | None]:
    if hidden.shape[:2] != ids.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and ids {tuple(ids.shape)} disagree on [N, T]")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    n, t = ids.shape
    if n * t == 0:
        empty = hidden.new_zeros((n, t), dtype=torch.float32)
        return empty, (empty.clone() if entropy else None)
    h = hidden.reshape(n * t, hidden.shape[-1])  # [N*T, H]
    flat = ids.reshape(n * t)  # [N*T]

    def fn(h_tile: Tensor, ids_tile: Tensor):
        return _tile_logprobs(h_tile, ids_tile, head, temperature, entropy)

    out = _run_tiles(fn, list(zip(h.split(tile), flat.split(tile), strict=True)))
    if not entropy:
        return torch.cat(out).view(n, t), None
    return torch.cat([o[0] for o in out]).view(n, t), torch.cat([o[1] for o in out]).view(n, t)


def tiled_lm_loss(
    hidden: Tensor, head: nn.Module, labels: Tensor, tile: int = 256, ignore_index: int = IGNORE_INDEX
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean next-token cross-entropy over labelled positions only, and token accuracy, without [B, L, V] logits.

    hidden: [B, L, H] final (normed) hidden states; labels: [B, L] with `ignore_index` on masked positions
    (position t predicts labels[t+1], as in `masked_lm_loss`) -> (loss, correct tokens, labelled tokens), scalars.
    Only the M labelled positions ([M, H], gathered first) go through the head, `tile` at a time; prompt, image and
    padding positions never do.
    """
    if hidden.shape[:2] != labels.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and labels {tuple(labels.shape)} disagree on [B, L]")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    targets = labels[:, 1:]  # [B, L-1]
    keep = targets != ignore_index  # [B, L-1]
    h = hidden[:, :-1][keep]  # [M, H]
    y = targets[keep]  # [M]
    m = y.numel()
    n = torch.tensor(m, device=labels.device)
    if m == 0:
        return hidden.sum() * 0.0, torch.zeros((), dtype=torch.long, device=labels.device), n

    def fn(h_tile: Tensor, y_tile: Tensor) -> tuple[Tensor, Tensor]:
        logits = head(h_tile).float()  # [tile, V]
        nll = nn.functional.cross_entropy(logits, y_tile, reduction="sum")
        correct = (logits.argmax(-1) == y_tile).sum()
        return nll, correct

    parts = _run_tiles(fn, list(zip(h.split(tile), y.split(tile), strict=True)))
    loss = torch.stack([p[0] for p in parts]).sum() / m
    correct = torch.stack([p[1] for p in parts]).sum()
    return loss, correct, n
