"""SFT maths and a short real fit."""

from __future__ import annotations

import torch

from geor1.model.policy import IGNORE_INDEX
from geor1.objectives.sft import masked_lm_loss


def test_masked_lm_loss_by_hand():
    # vocab 2, one row of 3 positions; only position 2's label counts (predicted from position 1's logits)
    logits = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 1]])
    loss, correct, n = masked_lm_loss(logits, labels)
    expected = -torch.log_softmax(torch.tensor([0.0, 2.0]), -1)[1]
    torch.testing.assert_close(loss, expected)
    assert (int(correct), int(n)) == (1, 1)
