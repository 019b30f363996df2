"""A padded micro-batch run as sub-batches of similar length: the plan, the slicing, the same loss and gradients."""

from __future__ import annotations

import pytest
import torch

from lit_lora import LoRASettings, QuantizationSettings
from lit_lora.model import length_split
from lit_lora.model.length_split import overhead_tokens, plan_sub_batches, right_padded_lengths, split_by_length
from tests.helpers.modules import build, lora_grads


def padded_batch(lengths: list[int], vocab: int = 50, width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded rows of the given lengths, each supervised on its second half."""
    width = width or max(lengths)
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full_like(input_ids, -100)
    mask = torch.zeros_like(input_ids)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(1, vocab, (length,), generator=generator)
        labels[row, length // 2 : length] = input_ids[row, length // 2 : length]
        mask[row, :length] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def test_the_plan_minimises_padded_tokens_plus_the_price_of_each_sub_batch():
    # Sorted 100, 95, 12, 10. Two runs: 2*100 + 2*12 + 2*6 = 236; each row alone:
    # 217 + 4*6 = 241; 100 | 95 | 12, 10: 100 + 95 + 24 + 18 = 237; one run: 400 + 6.
    assert plan_sub_batches([10, 100, 12, 95], overhead_tokens=6) == [[1, 3], [2, 0]]
    assert plan_sub_batches([10, 100, 12, 95], overhead_tokens=0) == [[1], [3], [2], [0]]
    # Where no split pays, the rows stay one batch in their order.
    assert plan_sub_batches([10, 100, 12, 95], overhead_tokens=200) == [[0, 1, 2, 3]]
    assert plan_sub_batches([7, 7, 7], overhead_tokens=0) == [[0, 1, 2]]
    assert plan_sub_batches([5], overhead_tokens=0) == [[0]]


def test_the_price_of_a_sub_batch_depends_on_device_and_autocast():
    cpu = torch.device("cpu")
    assert overhead_tokens(cpu) == length_split.OVERHEAD_TOKENS["cpu"] == 60
    # Under autocast every pass also casts the weights: a higher price.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert overhead_tokens(cpu) == length_split.OVERHEAD_TOKENS["cpu-autocast"] == 150
    assert overhead_tokens(torch.device("cuda", 0)) == overhead_tokens(torch.device("mps")) == 4096


def test_only_right_padded_rows_have_lengths():
    assert right_padded_lengths(torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])) == [2, 3, 1]
    assert right_padded_lengths(torch.tensor([[0, 1, 1], [1, 1, 1]])) is None  # left padding
    assert right_padded_lengths(torch.tensor([[1, 0, 1]])) is None


def test_sub_batches_hold_the_rows_trimmed_to_their_longest():
    data = padded_batch([3, 9, 4, 8], width=12)
    data["weight"] = torch.tensor([0.1, 0.2, 0.3, 0.4])  # a per-row value follows its row
    parts = split_by_length(data, overhead_tokens=0)
    assert [part["input_ids"].shape for part in parts] == [(1, 9), (1, 8), (1, 4), (1, 3)]
    rows = [1, 3, 2, 0]
    for part, row in zip(parts, rows):
        width = part["input_ids"].size(1)
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(part[key][0], data[key][row, :width])
        assert part["weight"].tolist() == [data["weight"][row].item()]
    assert split_by_length(data, overhead_tokens=1000) == [data]  # not worth it: the batch itself
    packed = {**data, "position_ids": data["attention_mask"]}
    assert split_by_length(packed, overhead_tokens=0) == [packed]  # packed rows are not split


def loss_and_grads(module, data):
    module.train()
    module.zero_grad()
    torch.manual_seed(7)
    loss_sum, count = module.compute_loss(data)
    (loss_sum / count).backward()
    return loss_sum.detach(), count, lora_grads(module)


def test_a_split_micro_batch_has_the_loss_and_gradients_of_the_whole(tiny_model_dir, monkeypatch):
    module = build(tiny_model_dir)
    data = padded_batch([5, 30, 7, 28, 12], vocab=module.model.config.vocab_size)
    whole = loss_and_grads(module, data)
    monkeypatch.setitem(length_split.OVERHEAD_TOKENS, "cpu", 0)
    split = loss_and_grads(module, data)
    assert split[1] == whole[1] == sum(int((row != -100)[1:].sum()) for row in data["labels"])
    torch.testing.assert_close(split[0], whole[0], rtol=1e-5, atol=1e-5)
    for name, grad in whole[2].items():
        torch.testing.assert_close(split[2][name], grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", [True, "selective"])
def test_checkpointing_replays_each_sub_batch_its_own_masks_and_outputs(tiny_model_dir, monkeypatch, mode):
    # Both runs draw the same dropout masks in the same order; the checkpointed one must
    # hand each sub-batch's recomputation the values of that sub-batch's forward.
    monkeypatch.setitem(length_split.OVERHEAD_TOKENS, "cpu", 0)
    lora = LoRASettings(r=4, alpha=8, dropout=0.2, init_lora_weights=False)
    quantization = QuantizationSettings(mode="nf4")
    checkpointed = build(tiny_model_dir, lora=lora, quantization=quantization, gradient_checkpointing=mode)
    stored = build(tiny_model_dir, lora=lora, quantization=quantization, gradient_checkpointing=False)
    data = padded_batch([6, 20, 20, 9], vocab=checkpointed.model.config.vocab_size)
    assert len(split_by_length(data, 0)) == 3  # two rows of the same length share a sub-batch
    expected = loss_and_grads(stored, data)
    got = loss_and_grads(checkpointed, data)
    torch.testing.assert_close(got[0], expected[0])
    for name, grad in expected[2].items():
        torch.testing.assert_close(got[2][name], grad, rtol=1e-5, atol=1e-7)
    assert all(len(queue) == 0 for queue in checkpointed._replays)
