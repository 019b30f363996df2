import math

import pytest
import torch

from lit_lora.model.loss import head_loss_sum, token_loss_sum


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


def test_head_loss_scores_only_supervised_rows_and_chunks_give_the_same_loss_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 4, requires_grad=True)
    head = torch.nn.Linear(4, 7, bias=False)
    labels = torch.tensor([[-100, -100, 3, 5, -100, 1], [-100, 2, 2, 6, 0, -100]])
    expected_sum, expected_count = token_loss_sum(head(hidden), labels)
    expected_sum.backward()
    expected_grad = hidden.grad.clone()
    for chunk_rows in (1024, 2, 1):
        hidden.grad = None
        loss_sum, count = head_loss_sum(hidden, head, labels, chunk_rows=chunk_rows)
        loss_sum.backward()
        assert count.item() == expected_count.item() == 7
        torch.testing.assert_close(loss_sum, expected_sum, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(hidden.grad, expected_grad, rtol=1e-6, atol=1e-6)
        # Positions whose next token is not supervised (and the last) get no gradient.
        assert hidden.grad[0, [0, 3, 5]].abs().sum() == 0 and hidden.grad[1, [4, 5]].abs().sum() == 0


def test_head_loss_of_a_batch_with_no_supervised_token_is_zero():
    hidden = torch.randn(1, 3, 4, requires_grad=True)
    loss_sum, count = head_loss_sum(hidden, torch.nn.Linear(4, 5), torch.full((1, 3), -100))
    loss_sum.backward()
    assert loss_sum.item() == 0.0 and count.item() == 0
