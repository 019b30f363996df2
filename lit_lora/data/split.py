"""Holding out a seeded fraction of the training rows for validation."""

from __future__ import annotations

import numpy as np

from lit_lora.errors import ConfigError


def holdout_split(num_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into disjoint training and held-out sets.

    The same ``num_rows``, ``fraction`` and ``seed`` always give the same split, so a
    resumed or repeated run validates on the same rows. Both are sorted arrays, keeping
    the file's order within each set; arrays rather than lists, so that millions of
    rows cost 8 bytes each, not a Python int each.

    Args:
        num_rows: How many rows the training file has.
        fraction: The share of rows to hold out, in (0, 1); rounded to at least one row.
        seed: Seeds the permutation the held-out rows are drawn from.

    Raises:
        ConfigError: The file is too small to keep at least one row on each side.
    """
    held_out = max(1, round(num_rows * fraction))
    if held_out >= num_rows:
        raise ConfigError(
            f"data.val_fraction: holding out {fraction} of {num_rows} rows leaves no training rows. "
            "Fix: lower data.val_fraction, add rows, or give a separate data.val_file."
        )
    order = np.random.default_rng(seed).permutation(num_rows)
    return np.sort(order[held_out:]), np.sort(order[:held_out])
