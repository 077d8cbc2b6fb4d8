"""Cross-view retrieval Recall@k (ground query -> satellite gallery), as a torchmetrics Metric."""

from __future__ import annotations

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def recall_at_k(query: Tensor, gallery: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """Share of queries whose own gallery item (same row index) ranks in the top k by dot product.

    query: [N, D], gallery: [N, D] (row i of each is the same place) -> {k: recall}.
    Ties count against the query (strictly more similar items push it down; equal ones do too).
    """
    sims = query.float() @ gallery.float().T  # [N, N]
    own = sims.diagonal().unsqueeze(1)  # [N, 1]
    rank = (sims > own).sum(1) + ((sims == own).sum(1) - 1)  # items at least as similar, except itself
    return {k: float((rank < k).float().mean()) for k in ks}


class CrossViewRecall(Metric):
    """Accumulates (ground, satellite) embedding pairs over an epoch and reports Recall@k over the whole gallery.
    States are concatenated across processes under DDP, so the gallery is the full validation set."""

    full_state_update = False
    query: list[Tensor]  # metric states (add_state), declared for the type checker
    gallery: list[Tensor]

    def __init__(self, ks: tuple[int, ...] = (1, 5, 10)) -> None:
        super().__init__()
        self.ks = ks
        self.add_state("query", default=[], dist_reduce_fx="cat")
        self.add_state("gallery", default=[], dist_reduce_fx="cat")

    def update(self, query: Tensor, gallery: Tensor) -> None:
        self.query.append(query.detach().float())
        self.gallery.append(gallery.detach().float())

    def compute(self) -> dict[str, Tensor]:
        q, g = dim_zero_cat(self.query), dim_zero_cat(self.gallery)
        return {f"recall@{k}": torch.tensor(v) for k, v in recall_at_k(q, g, self.ks).items()}
