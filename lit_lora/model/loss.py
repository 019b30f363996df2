"""Causal language-modelling loss as a (sum, count) pair.

Returning the sum and the number of supervised tokens, instead of a mean, lets the
module divide by the supervised-token count of the whole optimizer step, across
micro-batches and devices. A per-micro-batch mean would weigh a token in a short
micro-batch more than one in a long micro-batch.

:func:`head_loss_sum` applies the output head only where a label is supervised: the
vocabulary projection is a large share of a small model's FLOPs (SmolLM2-135M: 28M of
its 135M weights) and most positions of an instruction example are prompt.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from lit_lora.data.encode import IGNORE_INDEX

# Supervised positions whose vocabulary scores exist at once. Beyond one chunk, each is
# recomputed in backward instead of kept: 1024 rows x 128k vocabulary x (2 + 8) bytes
# (bf16 scores, their float32 copy and log-softmax) is 1.3 GB, where a whole batch of
# 4 x 2048 supervised tokens would be 10 GB.
LOSS_CHUNK_ROWS = 1024


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
    # The (N, V) supervised rows are selected before the float32 upcast: a float32 copy
    # of all (B, T, V) logits is ~4 GB at batch 4 x 2048 tokens x 128k vocabulary.
    return head_loss_sum(logits, torch.nn.Identity(), labels)


def head_loss_sum(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, chunk_rows: int = LOSS_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy, with the output head applied only where it counts.

    Equal to ``token_loss_sum(head(hidden), labels)``, without the ``(B, T, V)`` scores
    of unsupervised positions, and with at most ``chunk_rows`` rows of scores alive.

    Args:
        hidden: ``(B, T, D)`` final hidden states (after the last norm).
        head: The output projection ``D -> V``.
        labels: ``(B, T)`` as in :func:`token_loss_sum`.
        chunk_rows: Supervised positions scored at once.

    Returns:
        ``(loss_sum, num_tokens)`` as in :func:`token_loss_sum`.
    """
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    states = hidden[:, :-1][supervised]  # (N, D)
    targets = targets[supervised]  # (N,)
    if states.size(0) <= chunk_rows:
        return _scored_loss_sum(states, targets, head), supervised.sum()
    loss_sum = sum(
        checkpoint(_scored_loss_sum, chunk, chunk_targets, head, use_reentrant=False)
        for chunk, chunk_targets in zip(states.split(chunk_rows), targets.split(chunk_rows))
    )
    return loss_sum, supervised.sum()


def probe_separable_head(model: torch.nn.Module, hidden_states: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """Whether a model's logits are its output head applied to ``hidden_states(input_ids)``.

    True for most causal LMs; not for those that scale or soft-cap their logits
    (Gemma 2, Cohere) or whose decoder is not found. Checked on an 8-token probe, in
    eval mode (no dropout), leaving the model's mode as it was.

    Args:
        model: A Hugging Face causal LM (PEFT-wrapped or not).
        hidden_states: ``(1, 8)`` ids -> ``(1, 8, D)`` final hidden states of ``model``.
    """
    device = next(model.parameters()).device
    probe = torch.arange(1, 9, device=device).unsqueeze(0) % model.config.vocab_size
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(input_ids=probe).logits.float()
            found = model.get_output_embeddings()(hidden_states(probe)).float()
        return found.shape == expected.shape and torch.allclose(found, expected, rtol=1e-3, atol=1e-3)
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return False
    finally:
        model.train(training)


def _scored_loss_sum(states: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    # Float32 for the log-softmax, as in token_loss_sum.
    return F.cross_entropy(head(states).float(), targets, reduction="sum")


def sequence_log_probs(
    hidden: torch.Tensor, head: torch.nn.Module, labels: torch.Tensor, chunk_rows: int = LOSS_CHUNK_ROWS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each sequence's supervised tokens, with the head applied only where it counts.

    The score of a whole response, as preference losses compare them: ``sum_t log
    p(label_t)`` over the supervised positions of each row, with the same chunking as
    :func:`head_loss_sum`. Pass logits and ``torch.nn.Identity()`` for a model whose
    logits are not its head applied to its hidden states.

    Args:
        hidden: ``(B, T, D)`` final hidden states.
        head: The output projection ``D -> V``.
        labels: ``(B, T)`` as in :func:`token_loss_sum`.
        chunk_rows: Supervised positions scored at once.

    Returns:
        ``(log_probs, num_tokens)``, each ``(B,)``: float32 sums per row, and the
        supervised tokens per row.
    """
    targets = labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    rows = torch.arange(labels.size(0), device=labels.device).unsqueeze(1).expand_as(targets)[supervised]
    states, targets = hidden[:, :-1][supervised], targets[supervised]
    if states.size(0) <= chunk_rows:
        token_log_probs = _token_log_probs(states, targets, head)
    else:
        token_log_probs = torch.cat(
            [
                checkpoint(_token_log_probs, chunk, chunk_targets, head, use_reentrant=False)
                for chunk, chunk_targets in zip(states.split(chunk_rows), targets.split(chunk_rows))
            ]
        )
    sums = torch.zeros(labels.size(0), dtype=torch.float32, device=labels.device).index_add(0, rows, token_log_probs)
    return sums, supervised.sum(dim=1)


def _token_log_probs(states: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module) -> torch.Tensor:
    return -F.cross_entropy(head(states).float(), targets, reduction="none")
