"""The attention kernel of each micro-batch: eager for short rows on CPU, unless the user chose one."""

from __future__ import annotations

import pytest
import torch
import transformers.models.llama.modeling_llama as llama
from torch.utils.data import DataLoader

from lit_lora import LoRASettings
from lit_lora.model.attention import EAGER_MAX_LENGTH, attention_for_length
from tests.helpers.modules import batch, build
from tests.model.test_base import quiet_trainer


@pytest.mark.parametrize(
    ("length", "configured", "default", "device", "expected"),
    [
        (EAGER_MAX_LENGTH, None, "sdpa", "cpu", "eager"),
        (16, None, "sdpa", "cpu", "eager"),
        (EAGER_MAX_LENGTH + 1, None, "sdpa", "cpu", "sdpa"),
        (16, "sdpa", "sdpa", "cpu", "sdpa"),  # the user's choice is kept
        (16, None, "sdpa", "cuda", "sdpa"),
        (16, None, "flash_attention_2", "cpu", "flash_attention_2"),
        (1024, "eager", "eager", "cpu", "eager"),
    ],
)
def test_attention_for_length(length, configured, default, device, expected):
    assert attention_for_length(length, configured, default, device) == expected


def short_and_long_rows(vocab: int) -> dict[str, torch.Tensor]:
    """One row of the full length and seven of 8 tokens: split into two sub-batches by length."""
    data = batch(0, 8, EAGER_MAX_LENGTH, [6] * 8, vocab)
    data["attention_mask"][1:, 8:] = 0
    data["labels"][1:, 8:] = -100
    data["labels"][1:, 2:8] = data["input_ids"][1:, 2:8]
    return data


@pytest.fixture
def eager_calls(monkeypatch) -> list[int]:
    """Query lengths of every eager attention call (transformers looks the function up at each call)."""
    calls: list[int] = []
    eager = llama.eager_attention_forward

    def counted(module, query, *args, **kwargs):
        calls.append(query.size(-2))
        return eager(module, query, *args, **kwargs)

    monkeypatch.setattr(llama, "eager_attention_forward", counted)
    return calls


def fit_two_steps(tiny_model_dir, data: list[dict[str, torch.Tensor]], **kwargs) -> dict[str, torch.Tensor]:
    module = build(
        tiny_model_dir,
        lora=LoRASettings(r=4, alpha=8, dropout=0.1),
        gradient_checkpointing="selective",
        optimizer=lambda params: torch.optim.SGD(params, lr=0.5),
        **kwargs,
    )
    quiet_trainer(max_steps=2, enable_checkpointing=False, precision="32-true").fit(
        module, train_dataloaders=DataLoader(data, batch_size=None)
    )
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def test_short_rows_train_with_eager_attention_to_the_adapter_sdpa_trains(tiny_model_dir, eager_calls):
    vocab = 512
    # The first batch runs as two sub-batches (128 and 8 tokens): checkpointing's
    # recomputation of the first runs after the second's forward, with the same kernel.
    data = [short_and_long_rows(vocab), batch(1, 4, 40, [10, 20, 30, 39], vocab)]
    torch.manual_seed(3)
    chosen = fit_two_steps(tiny_model_dir, data)
    assert {EAGER_MAX_LENGTH, 8, 40} <= set(eager_calls)
    eager_calls.clear()
    torch.manual_seed(3)
    sdpa = fit_two_steps(tiny_model_dir, data, attn_implementation="sdpa")
    assert eager_calls == []
    assert chosen.keys() == sdpa.keys()
    for name in chosen:
        torch.testing.assert_close(chosen[name], sdpa[name], rtol=1e-4, atol=1e-5)
    # The update is not zero: the comparison is between trained adapters.
    assert any(not torch.equal(chosen[name], 0 * chosen[name]) for name in chosen if "lora_B" in name)


def test_rows_longer_than_the_limit_keep_sdpa(tiny_model_dir, eager_calls):
    fit_two_steps(tiny_model_dir, [batch(0, 2, EAGER_MAX_LENGTH + 1, [5, 9], 512)] * 2)
    assert eager_calls == []
