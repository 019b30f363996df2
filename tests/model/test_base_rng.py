"""LoRAModule's RNG checkpointing: saved with the checkpoint, restored once at the next training batch.

``on_save_checkpoint`` adds ``rng_states``; ``on_load_checkpoint`` only stashes them
(building the model, the sanity check and the dataloaders draw random numbers after
loading); the first ``on_train_batch_start`` restores them and forgets them. Checked on
the tiny random Llama, including that the LoRA dropout of a training forward repeats.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch

from lit_lora import LoRAModule, LoRASettings, QuantizationSettings

# These tests reseed and advance the global generators; give other tests theirs back.
pytestmark = pytest.mark.usefixtures("keep_global_generators")


@pytest.fixture(scope="module")
def module(tiny_model_dir):
    # A large dropout, and non-zero B matrices (the default init makes B zero, so the
    # adapters would add nothing whatever the mask), make the logits of a training
    # forward depend on the dropout masks drawn from the torch generator.
    module = LoRAModule(
        str(tiny_model_dir),
        random_init=True,
        quantization=QuantizationSettings(mode="none"),
        lora=LoRASettings(r=4, dropout=0.5, init_lora_weights=False),
        gradient_checkpointing=False,
    )
    torch.manual_seed(0)
    module.configure_model()
    module.train()
    return module


def draws(module: LoRAModule) -> dict:
    """What a training step might draw: every global generator and a LoRA-dropout forward."""
    input_ids = torch.arange(1, 9).reshape(1, 8) % module.model.config.vocab_size
    with torch.no_grad():
        logits = module(input_ids, torch.ones_like(input_ids))
    return {
        "torch": torch.rand(4),
        "python": random.random(),
        "numpy": np.random.rand(2),
        "logits": logits,
    }


def assert_same(actual: dict, expected: dict) -> None:
    assert torch.equal(actual["torch"], expected["torch"])
    assert actual["python"] == expected["python"]
    assert np.array_equal(actual["numpy"], expected["numpy"])
    assert torch.equal(actual["logits"], expected["logits"])


def saved_checkpoint(module: LoRAModule) -> dict:
    """What Lightning writes and later reads back (weights-only) for this module."""
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_lora_dropout_is_active_in_the_fixture(module):
    # Otherwise the logits comparisons below could not tell masks apart.
    assert not torch.equal(draws(module)["logits"], draws(module)["logits"])


def test_on_save_checkpoint_adds_the_current_rng_states(module):
    checkpoint = saved_checkpoint(module)
    assert {"torch", "python", "numpy"} <= checkpoint["rng_states"].keys()
    assert torch.equal(checkpoint["rng_states"]["torch"], torch.get_rng_state())


def test_states_are_restored_at_the_first_training_batch_after_loading(module):
    checkpoint = saved_checkpoint(module)
    expected = draws(module)  # the uninterrupted run's next step

    # A resumed process: other seeds, then loading, then draws before training starts.
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    module.on_load_checkpoint(checkpoint)
    assert not torch.equal(torch.rand(4), expected["torch"])  # loading itself restores nothing

    module.on_train_batch_start(batch=None, batch_idx=0)
    assert_same(draws(module), expected)


def test_states_are_restored_only_once(module):
    checkpoint = saved_checkpoint(module)
    module.on_load_checkpoint(checkpoint)
    module.on_train_batch_start(batch=None, batch_idx=0)
    first = draws(module)
    assert module._rng_to_restore is None
    # The next batch goes on from where the generators are, not back to the checkpoint.
    module.on_train_batch_start(batch=None, batch_idx=1)
    second = draws(module)
    assert not torch.equal(second["torch"], first["torch"])
    assert not torch.equal(second["logits"], first["logits"])


def test_a_checkpoint_without_rng_states_leaves_the_generators_alone(module):
    # Checkpoints written before RNG states were saved still resume.
    checkpoint = saved_checkpoint(module)
    del checkpoint["rng_states"]
    module.on_load_checkpoint(checkpoint)
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    module.on_train_batch_start(batch=None, batch_idx=0)
    assert torch.equal(torch.rand(4), expected)
