import math

import pytest
import torch

from lit_lora.model.loss import token_loss_sum


def test_token_loss_sum_matches_hand_computation():
    # Batch of 1, 3 positions, vocabulary of 2: position t predicts labels[t + 1].
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(4.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[7, 1, 0]])  # labels[0] is never predicted
    loss_sum, count = token_loss_sum(logits, labels)
    # p(1 | pos 0) = 3/4, p(0 | pos 1) = 4/5
    assert count.item() == 2
    assert loss_sum.item() == pytest.approx(-math.log(3 / 4) - math.log(4 / 5), rel=1e-6)


def test_ignored_positions_do_not_count():
    logits = torch.zeros(2, 4, 5)
    labels = torch.tensor([[1, 2, -100, -100], [-100, -100, -100, 3]])
    loss_sum, count = token_loss_sum(logits, labels)
    assert count.item() == 2
    assert loss_sum.item() == pytest.approx(2 * math.log(5.0), rel=1e-6)
