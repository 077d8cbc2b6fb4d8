"""Unreadable answers counted per reason code of `geor1.reading.REASONS`, as a torchmetrics Metric (summed across
ranks)."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class ReasonCounts(Metric):
    """How many answers could not be read, per reason code of `geor1.reading.REASONS` (summed across ranks)."""

    full_state_update = False
    counts: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        from geor1.reading import REASONS

        self.reasons = list(REASONS)
        self.add_state("counts", default=torch.zeros(len(self.reasons), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, reasons: list[str | None]) -> None:
        for r in reasons:
            if r:
                self.counts[self.reasons.index(r)] += 1

    def compute(self) -> dict[str, int]:
        return {r: int(c) for r, c in zip(self.reasons, self.counts.tolist(), strict=True) if c}
