"""Token log-probabilities and the SFT loss without materialising [N, T, V] logits.

At Qwen's vocabulary (151,936) the logits of a GRPO micro-batch (G=8 completions of 1,024 tokens) are 5 GB in
float32, and a plain `log_softmax` + backward holds several copies of them. Here the LM head runs on tiles of
`tile` token positions; each tile's logits give the chosen token's log-prob and the log-sum-exp and are dropped,
then recomputed in backward (non-reentrant `torch.utils.checkpoint`). Peak memory is then a few tiles' logits,
whatever N and T are, and values and gradients equal the full-logits computation (tests/test_logprobs.py).

The head is always called as a module, `head(h)`, never through `head.weight`, so that FSDP2 unsharding and PEFT
(LoRA on the head) hooks fire, in the forward and in the recomputation alike.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100


def _tile_logprobs(h: Tensor, ids: Tensor, head: nn.Module, temperature: float) -> Tensor:
    """h: [n, H], ids: [n] -> [n] float32 log softmax(head(h) / temperature)[ids]."""
    logits = head(h).float()  # [n, V]
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)  # [n]


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
    if hidden.shape[:2] != ids.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and ids {tuple(ids.shape)} disagree on [N, T]")
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    n, t = ids.shape
    if n * t == 0:
        return hidden.new_zeros((n, t), dtype=torch.float32)
    h = hidden.reshape(n * t, hidden.shape[-1])  # [N*T, H]
    flat = ids.reshape(n * t)  # [N*T]

    def fn(h_tile: Tensor, ids_tile: Tensor) -> Tensor:
        return _tile_logprobs(h_tile, ids_tile, head, temperature)

    out = _run_tiles(fn, list(zip(h.split(tile), flat.split(tile), strict=True)))
    return torch.cat(out).view(n, t)


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
