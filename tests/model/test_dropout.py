"""ReplayDropout: LoRA dropout masks drawn once and replayed by checkpoint recomputation."""

from __future__ import annotations

import pytest
import torch
from test_module import batch, build, lora_grads

from lit_lora import LoRASettings, QuantizationSettings
from lit_lora.model.dropout import ReplayDropout, use_replay_dropout


def test_masks_keep_one_minus_p_scaled_and_are_queued_only_with_gradients():
    dropout = ReplayDropout(0.25)
    x = torch.ones(200_000, requires_grad=True)
    out = dropout(x)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert (out > 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert len(dropout._masks) == 1
    with torch.no_grad():
        dropout(x)
    assert len(dropout._masks) == 1
    dropout.reset()
    assert not dropout._masks
    dropout.eval()
    assert dropout(x) is x


def test_a_recomputation_without_a_forward_mask_is_an_error():
    dropout = ReplayDropout(0.5)
    x = torch.ones(4, requires_grad=True)
    y = torch.utils.checkpoint.checkpoint(dropout, x, use_reentrant=False)
    dropout.reset()  # as if the step had ended before the backward
    with pytest.raises(RuntimeError, match="recomputed without a mask"):
        y.sum().backward()


def test_checkpointed_training_gets_the_gradients_of_its_forward_masks(tiny_model_dir):
    lora = LoRASettings(r=4, alpha=8, dropout=0.2, init_lora_weights=False)
    plain = QuantizationSettings(mode="none")
    checkpointed = build(tiny_model_dir, lora=lora, quantization=plain, gradient_checkpointing=True)
    stored = build(tiny_model_dir, lora=lora, quantization=plain, gradient_checkpointing=False)
    assert len(checkpointed._replay_dropouts) == 14  # 7 projections x 2 layers, on CPU
    use_replay_dropout(stored.model)  # no recomputation: the masks of the forward are used as drawn
    data = batch(0, 2, 16, [5, 9], checkpointed.model.config.vocab_size)
    grads = []
    for module in (checkpointed, stored):
        module.train()
        torch.manual_seed(7)
        loss_sum, count = module.compute_loss(data)
        (loss_sum / count).backward()
        grads.append(lora_grads(module))
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grad, grads[1][name], rtol=1e-5, atol=1e-7)
    assert all(not d._masks for d in checkpointed._replay_dropouts)  # every mask was replayed
