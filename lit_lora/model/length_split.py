"""Splitting a padded micro-batch into sub-batches of similar length, each trimmed to its longest row.

A collated batch is padded to its longest example, and every padded position costs
a full forward and backward. Running the same rows as a few sub-batches, sorted by
length and each cut to its own longest row, computes the same summed loss and the
same gradients (the sum over rows does not care how rows are grouped) over fewer
positions: the optimizer step trains on exactly the examples the loader drew, so
the data order, the loss normalisation and resumption are untouched. Each extra
sub-batch costs one more pass through the layers (kernel launches, Python,
autograd bookkeeping), priced in tokens by ``overhead_tokens``; the split is chosen
to minimise padded tokens plus that price (:func:`plan_sub_batches`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

# What one more sub-batch costs, in padded tokens it must save to pay: a pass through
# the layers has a fixed cost (NF4 dequantization, and under autocast a cast of every
# weight, kernel launches, autograd bookkeeping). Fitted on CPU over forward and
# backward of 10 shapes from 1 x 32 to 8 x 256 (docs/benchmarks.md): float32 about 53
# tokens (AMD EPYC) and 64 (Intel Xeon); bf16 autocast 153 (the Xeon, AMX). On CUDA
# small sub-batches leave the GPU idle behind kernel launches, so the price is set far
# higher (a guess: no GPU has measured it yet).
OVERHEAD_TOKENS = {"cpu": 60, "cpu-autocast": 150, "cuda": 4096}


def overhead_tokens(device: torch.device) -> int:
    """What one more sub-batch costs on ``device`` in the current precision, in padded tokens.

    Accelerators other than CUDA count as CUDA; on CPU the price under autocast (mixed
    precision, as ``training_step`` runs) is the ``cpu-autocast`` one.
    """
    if device.type != "cpu":
        return OVERHEAD_TOKENS["cuda"]
    return OVERHEAD_TOKENS["cpu-autocast" if torch.is_autocast_enabled("cpu") else "cpu"]


def right_padded_lengths(attention_mask: torch.Tensor) -> list[int] | None:
    """Each row's token count, or ``None`` unless every row is its tokens followed by padding.

    Args:
        attention_mask: ``(B, T)``, 1 on tokens and 0 on padding.
    """
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    expected = (positions < lengths[:, None]).to(attention_mask.dtype)
    return lengths.tolist() if torch.equal(attention_mask, expected) else None


def plan_sub_batches(lengths: Sequence[int], overhead_tokens: int) -> list[list[int]]:
    """Rows grouped into sub-batches that minimise padded tokens plus ``overhead_tokens`` per sub-batch.

    Rows are sorted longest first and cut into contiguous runs (an optimal grouping
    is always one of those); a dynamic programme over the cut points finds the
    cheapest, in ``O(B^2)`` for ``B`` rows.

    Args:
        lengths: Token count of each row.
        overhead_tokens: What one more sub-batch costs, in padded tokens.

    Returns:
        Row indices of each sub-batch, longest rows first; one sub-batch of every
        row, in order, where splitting does not pay.
    """
    order = sorted(range(len(lengths)), key=lambda row: -lengths[row])
    # best[j]: cheapest cost of the first j sorted rows; cut[j]: where its last run starts.
    best, cut = [0] + [0] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        best[end], cut[end] = min(
            (best[start] + (end - start) * lengths[order[start]] + overhead_tokens, start) for start in range(end)
        )
    runs, end = [], len(order)
    while end > 0:
        runs.append(order[cut[end] : end])
        end = cut[end]
    return [list(range(len(lengths)))] if len(runs) == 1 else runs[::-1]


def split_by_length(batch: dict[str, torch.Tensor], overhead_tokens: int) -> list[dict[str, torch.Tensor]]:
    """``batch`` as sub-batches of similar length, each trimmed to its longest row (:func:`plan_sub_batches`).

    Args:
        batch: A right-padded batch: ``input_ids``, ``attention_mask`` and other
            ``(B, T)`` tensors, and any ``(B, ...)`` per-row tensors.
        overhead_tokens: What one more sub-batch costs, in padded tokens.

    Returns:
        ``[batch]`` itself when it is not right-padded, or splitting does not pay.
    """
    mask = batch.get("attention_mask")
    tensors = all(isinstance(value, torch.Tensor) for value in batch.values())
    lengths = None if mask is None or "position_ids" in batch or not tensors else right_padded_lengths(mask)
    if lengths is None:
        return [batch]
    runs = plan_sub_batches(lengths, overhead_tokens)
    if len(runs) == 1:
        return [batch]
    shape = mask.shape
    parts = []
    for rows in runs:
        index = torch.tensor(rows, device=mask.device)
        width = lengths[rows[0]]
        parts.append(
            {
                key: value.index_select(0, index)[:, :width]
                if value.shape[:2] == shape
                else value.index_select(0, index)
                for key, value in batch.items()
            }
        )
    return parts
