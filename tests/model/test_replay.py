"""Checkpoint recomputation replaying LoRA dropout masks and the frozen base layers' outputs."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

import lit_lora.model.base as base_module
from lit_lora import LoRASettings, QuantizationSettings
from lit_lora.errors import ConfigError
from lit_lora.model.gradient_checkpointing import enable_gradient_checkpointing
from lit_lora.model.replay import (
    ReplayDropout,
    ReplayLinear,
    keep_mask,
    replayable,
    use_replay_linears,
)
from tests.helpers.modules import batch, build, lora_grads

DROPOUT = LoRASettings(r=4, alpha=8, dropout=0.2, init_lora_weights=False)


def test_masks_keep_each_element_with_the_probability_asked_in_all_four_lanes_of_a_draw():
    torch.manual_seed(0)
    mask, keep = keep_mask(torch.Size([1000, 1000]), 0.95)
    assert mask.dtype == torch.bool and mask.shape == (1000, 1000)
    assert keep == round(0.95 * 2**16) / 2**16 == 62259 / 65536
    # Binomial standard deviation of the mean over 10^6 elements: 2.2e-4.
    assert mask.float().mean().item() == pytest.approx(0.95, abs=1e-3)
    lanes = mask.flatten()
    for lane in range(4):  # each 16-bit quarter of a 64-bit draw, the sign bit's included (sd 4.4e-4)
        assert lanes[lane::4].float().mean().item() == pytest.approx(0.95, abs=2e-3)
    assert keep_mask(torch.Size([3]), 0.5)[0].shape == (3,)  # a count not a multiple of 4 uses part of a draw
    assert keep_mask(torch.Size([10_000]), 1 - 2**-18)[0].all()  # rounds to 1: every lane kept, the largest too
    assert not keep_mask(torch.Size([10_000]), 0.0)[0].any()


def test_masks_keep_one_minus_p_scaled_and_are_queued_only_with_gradients():
    dropout = ReplayDropout(0.25)
    x = torch.ones(200_000, requires_grad=True)
    out = dropout(x)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.75)]
    assert (out > 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert len(dropout.replay) == 1
    with torch.no_grad():
        dropout(x)
    assert len(dropout.replay) == 1
    dropout.replay.reset()
    assert len(dropout.replay) == 0
    dropout.eval()
    assert dropout(x) is x
    assert ReplayDropout(0.25, replay=False).replay is None  # without checkpointing nothing is kept


def test_a_recomputation_without_a_value_from_the_forward_is_an_error():
    dropout = ReplayDropout(0.5)
    x = torch.ones(4, requires_grad=True)
    y = torch.utils.checkpoint.checkpoint(dropout, x, use_reentrant=False)
    dropout.replay.reset()  # as if the micro-batch had ended before the backward
    with pytest.raises(RuntimeError, match="ReplayDropout: recomputed without a value"):
        y.sum().backward()


def checkpointed_and_stored_grads(tiny_model_dir, quantization, mode):
    """LoRA gradients of one batch with ``gradient_checkpointing: mode`` and without checkpointing.

    Both draw the same dropout masks: on CPU both runs' dropouts are ReplayDropout.
    """
    checkpointed = build(tiny_model_dir, lora=DROPOUT, quantization=quantization, gradient_checkpointing=mode)
    stored = build(tiny_model_dir, lora=DROPOUT, quantization=quantization, gradient_checkpointing=False)
    dropout = stored.model.base_model.model.model.layers[0].self_attn.q_proj.lora_dropout["default"]
    assert isinstance(dropout, ReplayDropout) and dropout.replay is None
    assert stored._replays == []
    data = batch(0, 2, 16, [5, 9], checkpointed.model.config.vocab_size)
    grads = []
    for module in (checkpointed, stored):
        module.train()
        torch.manual_seed(7)
        loss_sum, count = module.compute_loss(data)
        (loss_sum / count).backward()
        grads.append(lora_grads(module))
    assert grads[0].keys() == grads[1].keys()
    return checkpointed, grads


def test_checkpointed_training_gets_the_gradients_of_its_forward_masks(tiny_model_dir):
    module, (checkpointed, stored) = checkpointed_and_stored_grads(
        tiny_model_dir, QuantizationSettings(mode="none"), True
    )
    assert len(module._replays) == 14  # 7 projections x 2 layers, on CPU
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, stored[name], rtol=1e-5, atol=1e-7)
    assert all(len(queue) == 0 for queue in module._replays)  # every mask was replayed


@pytest.mark.parametrize("mode", ["nf4", "none"])
def test_selective_checkpointing_gets_the_gradients_of_no_checkpointing(tiny_model_dir, mode):
    module, (checkpointed, stored) = checkpointed_and_stored_grads(
        tiny_model_dir, QuantizationSettings(mode=mode), "selective"
    )
    layer = module.model.base_model.model.model.layers[0].mlp.down_proj.base_layer
    assert isinstance(layer, ReplayLinear)
    assert isinstance(layer, bnb.nn.Linear4bit if mode == "nf4" else torch.nn.Linear)
    assert len(module._replays) == 28  # 14 dropouts and 14 base layers
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, stored[name], rtol=1e-5, atol=1e-7)
    assert all(len(queue) == 0 for queue in module._replays)  # every kept output was taken


@pytest.mark.parametrize("mode", [True, "selective"])
def test_checkpointing_the_first_layer_only_gets_the_gradients_of_no_checkpointing(tiny_model_dir, monkeypatch, mode):
    # What configure_model applies when the memory plan checkpoints one of the two layers.
    monkeypatch.setattr(
        base_module,
        "enable_gradient_checkpointing",
        lambda model, m, layers: enable_gradient_checkpointing(model, m, 1),
    )
    module, (checkpointed, stored) = checkpointed_and_stored_grads(
        tiny_model_dir, QuantizationSettings(mode="nf4"), mode
    )
    first, second = module.model.base_model.model.model.layers
    assert first.gradient_checkpointing and not second.gradient_checkpointing
    assert first.mlp.down_proj.lora_dropout["default"].replay is not None
    assert second.mlp.down_proj.lora_dropout["default"].replay is None
    assert isinstance(first.mlp.down_proj.base_layer, ReplayLinear) == (mode == "selective")
    assert not isinstance(second.mlp.down_proj.base_layer, ReplayLinear)
    # The first layer's 7 dropouts, and with selective its 7 base layers.
    assert len(module._replays) == (14 if mode == "selective" else 7)
    for name, grad in checkpointed.items():
        torch.testing.assert_close(grad, stored[name], rtol=1e-5, atol=1e-7)
    assert all(len(queue) == 0 for queue in module._replays)


def test_a_replayed_4bit_layer_gets_the_gradient_of_bitsandbytes():
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
    layer.load_state_dict({"weight": torch.randn(32, 64)})
    layer = layer.to("cpu").requires_grad_(False)
    x = torch.randn(3, 64, requires_grad=True)
    grad = torch.randn(3, 32)

    def forward(x: torch.Tensor) -> torch.Tensor:
        return layer(x).sin()  # sin saves the product: the recomputation must rebuild it

    forward(x).backward(grad)
    expected = x.grad.clone()
    x.grad = None
    use_replay_linears([layer])
    output = torch.utils.checkpoint.checkpoint(forward, x, use_reentrant=False)
    assert len(layer.replay) == 1
    output.backward(grad)
    assert torch.equal(x.grad, expected)  # the forward's own graph took it
    assert len(layer.replay) == 0
    # Reentrant checkpointing runs the forward without gradients: nothing is kept to replay.
    with pytest.raises(RuntimeError, match="recomputed without a value"):
        torch.utils.checkpoint.checkpoint(forward, x, use_reentrant=True).backward(grad)


def test_only_frozen_4bit_or_plain_linear_layers_are_replayable():
    assert replayable(torch.nn.Linear(4, 4).requires_grad_(False))
    assert not replayable(torch.nn.Linear(4, 4))  # trains its weight: needs its input
    assert not replayable(bnb.nn.Linear8bitLt(4, 4, has_fp16_weights=False))
    with pytest.raises(ValueError, match="not a frozen 4-bit or plain linear layer"):
        use_replay_linears([torch.nn.Linear(4, 4)])


def test_selective_checkpointing_refuses_an_8bit_base_at_construction(tiny_model_dir):
    with pytest.raises(ConfigError, match="model.gradient_checkpointing: selective .* set quantization.mode: nf4"):
        build(tiny_model_dir, quantization=QuantizationSettings(mode="int8"), gradient_checkpointing="selective")
