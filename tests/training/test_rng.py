"""rng_states / set_rng_states: a resumed run draws the same random numbers as the uninterrupted one.

Covers torch's CPU generator, Python's ``random`` and NumPy's global generator, that
the captured states survive ``torch.save`` / ``torch.load(weights_only=True)`` (how
Lightning reads checkpoints), and that dropout masks repeat after a restore.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from lit_lora.training.rng import rng_states, set_rng_states

# These tests reseed and advance the global generators; give other tests theirs back.
pytestmark = pytest.mark.usefixtures("keep_global_generators")


def draws() -> dict:
    """A few values from every generator a training step may use."""
    return {
        "torch": torch.rand(5),
        "torch_normal": torch.randn(3),  # normal samples take another code path than uniform ones
        "python": [random.random() for _ in range(3)],
        "python_gauss": random.gauss(0.0, 1.0),  # Python keeps a cached gauss value in its state
        "numpy": np.random.rand(4),
        "numpy_normal": np.random.standard_normal(3),  # NumPy caches one too (has_gauss)
    }


def assert_same_draws(actual: dict, expected: dict) -> None:
    assert torch.equal(actual["torch"], expected["torch"])
    assert torch.equal(actual["torch_normal"], expected["torch_normal"])
    assert actual["python"] == expected["python"]
    assert actual["python_gauss"] == expected["python_gauss"]
    assert np.array_equal(actual["numpy"], expected["numpy"])
    assert np.array_equal(actual["numpy_normal"], expected["numpy_normal"])


def through_a_checkpoint_file(states: dict) -> dict:
    buffer = io.BytesIO()
    torch.save({"rng_states": states}, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)["rng_states"]


def test_restoring_the_captured_states_repeats_every_generators_draws():
    # An odd number of gauss draws first leaves a cached value in Python's and
    # NumPy's states, which must be captured too.
    random.gauss(0.0, 1.0)
    np.random.standard_normal(1)
    states = rng_states()
    expected = draws()
    draws()  # move on, as the rest of an interrupted run would
    set_rng_states(states)
    assert_same_draws(draws(), expected)


def test_states_restore_after_a_weights_only_checkpoint_round_trip():
    states = rng_states()
    expected = draws()
    draws()
    set_rng_states(through_a_checkpoint_file(states))
    assert_same_draws(draws(), expected)


def test_captured_states_hold_only_tensors_and_plain_values():
    states = rng_states()
    assert {"torch", "python", "numpy"} <= states.keys()
    assert states["torch"].dtype == torch.uint8
    loaded = through_a_checkpoint_file(states)
    assert torch.equal(loaded["torch"], states["torch"])
    assert loaded["python"] == states["python"]
    kind, key, pos, has_gauss, gauss = loaded["numpy"]
    assert (kind, pos, has_gauss, gauss) == tuple(states["numpy"][i] for i in (0, 2, 3, 4))
    assert torch.equal(key, states["numpy"][1])


def test_restoring_does_not_depend_on_the_state_in_between():
    # A resumed process starts from another seed entirely before restoring.
    torch.manual_seed(0)
    states = rng_states()
    expected = draws()
    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)
    set_rng_states(states)
    assert_same_draws(draws(), expected)


def test_dropout_masks_repeat_after_a_restore():
    ones = torch.ones(64, 64)
    states = through_a_checkpoint_file(rng_states())
    first = torch.nn.functional.dropout(ones, p=0.5, training=True)
    torch.nn.functional.dropout(ones, p=0.5, training=True)  # another step's mask
    set_rng_states(states)
    again = torch.nn.functional.dropout(ones, p=0.5, training=True)
    assert torch.equal(again, first)
    # Guard: the mask is a real one, so equality is not trivial.
    assert 0 < int((first == 0).sum()) < ones.numel()
