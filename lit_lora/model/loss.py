"""Causal language-modelling loss as a (sum, count) pair.

Returning the sum and the number of supervised tokens, instead of a mean, lets the
module divide by the supervised-token count of the whole optimizer step, across
micro-batches and devices. A per-micro-batch mean would weigh a token in a short
micro-batch more than one in a long micro-batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


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
    scores = logits[:, :-1]
    # Cross-entropy in float32 whatever the model's dtype: log-softmax over a large
    # vocabulary in bf16 loses the small probabilities that matter for the loss.
    loss_sum = F.cross_entropy(
        scores.reshape(-1, scores.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss_sum, (targets != IGNORE_INDEX).sum()
