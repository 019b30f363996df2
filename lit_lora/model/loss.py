"""Causal language-modelling loss as a (sum, count) pair.

Returning the sum and the number of supervised tokens, instead of a mean, lets the
module divide by the supervised-token count of the whole optimizer step, across
micro-batches and devices. A per-micro-batch mean would weigh a token in a short
micro-batch more than one in a long micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_lora.data.encode import IGNORE_INDEX


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy over supervised positions.

    Args:
        logits: ``(B, T, V)`` scores for the token after each position.
        labels: ``(B, T)`` token ids aligned with the inputs; ``-100`` marks a
            position that is not trained. Position ``t`` is predicted from ``t - 1``,
            so ``labels[:, 0]`` is never used.

    Returns:
        ``(loss_sum, num_tokens)``: the float32 sum of ``-log p(label)`` over
        supervised positions, and how many there were (int64 scalar).
    """
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    # Select the (N, V) supervised rows before upcasting: a float32 copy of all
    # (B, T, V) logits is ~4 GB at batch 4 x 2048 tokens x 128k vocabulary. Float32
    # itself matters: a bf16 log-softmax over a large vocabulary loses small probabilities.
    scores = logits[:, :-1][supervised].float()
    loss_sum = F.cross_entropy(scores, targets[supervised], reduction="sum")
    return loss_sum, supervised.sum()
