"""Dataset statistics: how many examples a split keeps, how long they are, how much is trained.

Computed from the tokenized columns (``input_ids``, ``num_supervised``,
``truncated``) with Arrow and numpy, never a Python loop over rows, so they cost
little next to tokenizing even for millions of examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset

# Token length percentiles reported, besides the maximum.
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class SplitStats:
    """What one split holds once tokenized.

    Args:
        rows: Examples read from the data.
        kept: Examples kept for training or evaluation.
        truncated: Kept examples cut at ``data.max_length``.
        lengths: Token length of the kept examples at each of ``PERCENTILES``: the
            shortest length that at least that share of the examples does not exceed.
        max_length: Longest kept example, in tokens.
        tokens: Tokens in the kept examples.
        supervised: Of those, the tokens the loss counts.
    """

    rows: int
    kept: int
    truncated: int
    lengths: tuple[int, ...]
    max_length: int
    tokens: int
    supervised: int

    @property
    def dropped(self) -> int:
        """Examples dropped for having no supervised token within ``data.max_length``."""
        return self.rows - self.kept

    @property
    def supervised_fraction(self) -> float:
        """Share of the kept tokens that the loss counts; 0 when nothing is kept."""
        return self.supervised / self.tokens if self.tokens else 0.0


def token_lengths(examples: Dataset, column: str = "input_ids") -> np.ndarray:
    """Token count of every example (of its ``column``), read from Arrow without materialising the token lists."""
    return pc.list_value_length(examples.with_format("arrow")[column]).to_numpy(zero_copy_only=False)


def split_stats(examples: Dataset, rows: Sequence[int] | None = None) -> SplitStats:
    """Statistics of tokenized examples, as the data module keeps them.

    An example is kept when it has at least one supervised token (``num_supervised``
    above 0), as :class:`~lit_lora.data.SFTDataModule` does.

    Args:
        examples: Tokenized examples with ``input_ids``, ``num_supervised`` and
            ``truncated`` columns, as :func:`~lit_lora.data.encode.encode_segments` makes them.
        rows: Which of the examples belong to the split; ``None`` for all.
    """
    columns = examples.select_columns(["num_supervised", "truncated"]).with_format("arrow")[:]
    lengths = token_lengths(examples)
    supervised = columns["num_supervised"].to_numpy(zero_copy_only=False)
    truncated = columns["truncated"].to_numpy(zero_copy_only=False)
    if rows is not None:
        index = np.asarray(rows, dtype=np.int64)
        lengths, supervised, truncated = lengths[index], supervised[index], truncated[index]
    kept = supervised > 0
    kept_lengths = lengths[kept]
    percentiles = (
        np.percentile(kept_lengths, PERCENTILES, method="inverted_cdf") if kept.any() else [0] * len(PERCENTILES)
    )
    return SplitStats(
        rows=len(lengths),
        kept=int(kept.sum()),
        truncated=int(truncated[kept].sum()),
        lengths=tuple(int(value) for value in percentiles),
        max_length=int(kept_lengths.max(initial=0)),
        tokens=int(kept_lengths.sum()),
        supervised=int(supervised[kept].sum()),
    )


def format_stats(stats: Mapping[str, SplitStats]) -> str:
    """A plain-text table of the statistics, one row per split, in the mapping's order.

    Args:
        stats: Statistics by split name.
    """
    header = ["split", "rows", "kept", "dropped", "truncated", *(f"p{p}" for p in PERCENTILES), "max", "supervised"]
    table = [header] + [
        [
            split,
            str(split_stats.rows),
            str(split_stats.kept),
            str(split_stats.dropped),
            str(split_stats.truncated),
            *(str(length) for length in split_stats.lengths),
            str(split_stats.max_length),
            f"{split_stats.supervised_fraction:.1%}",
        ]
        for split, split_stats in stats.items()
    ]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    # The split name reads best left-aligned, the numbers right-aligned.
    lines = [
        "  ".join(
            [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        )
        for row in table
    ]
    legend = [
        "dropped: no supervised token within data.max_length; truncated: kept, but cut at data.max_length;",
        "p50-max: token lengths of the kept examples; supervised: share of their tokens the loss counts.",
    ]
    return "\n".join(lines + legend)
