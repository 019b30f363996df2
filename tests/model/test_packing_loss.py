"""A packed batch computes exactly what the same examples compute unpacked."""

import pytest
import torch

from lit_lora import LoRAModule
from lit_lora.data.collate import SFTCollator
from lit_lora.data.encode import IGNORE_INDEX
from lit_lora.data.packing import PackedCollator, PackedDataset, split_packs
from lit_lora.errors import ConfigError
from lit_lora.model.lora import LoRASettings
from lit_lora.model.quantization import QuantizationSettings

PAD = 1


def _examples() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length, prompt in ((9, 4), (5, 2), (12, 6), (1, 0), (7, 3)):
        ids = torch.randint(3, 512, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        examples.append(
            {"input_ids": ids, "labels": labels, "num_supervised": sum(x != IGNORE_INDEX for x in labels[1:])}
        )
    return examples


@pytest.fixture(scope="module", params=["eager", "sdpa"])
def module(request, tiny_model_dir):
    module = LoRAModule(
        str(tiny_model_dir),
        random_init=True,
        quantization=QuantizationSettings(mode="none"),
        lora=LoRASettings(r=4, init_lora_weights=False),
        # Off, so the config's use_cache stays on: packing must not depend on it being off.
        gradient_checkpointing=False,
        attn_implementation=request.param,
    )
    torch.manual_seed(0)
    module.configure_model()
    return module.eval()


# Two rows of different lengths, so the shorter one is padded as well.
PACKS = [[0, 1, 3], [2, 4]]


def test_packed_loss_equals_unpacked_loss(module):
    examples = _examples()
    packed = PackedCollator(PAD)([[examples[i] for i in pack] for pack in PACKS])
    unpacked = SFTCollator(PAD)(examples)
    with torch.no_grad():
        packed_sum, packed_count = module.compute_loss(packed)
        unpacked_sum, unpacked_count = module.compute_loss(unpacked)
    assert packed_count.item() == unpacked_count.item() == sum(e["num_supervised"] for e in examples)
    torch.testing.assert_close(packed_sum, unpacked_sum, rtol=1e-5, atol=1e-5)


def test_each_packed_example_has_its_unpacked_logits(module):
    examples = _examples()
    batch = PackedCollator(PAD)([[examples[i] for i in pack] for pack in PACKS])
    with torch.no_grad():
        logits = module(batch["input_ids"], position_ids=batch["position_ids"])
        for row, pack in enumerate(PACKS):
            start = 0
            for index in pack:
                ids = torch.tensor([examples[index]["input_ids"]])
                alone = module(ids)[0]
                # Equal logits prove both isolation (no attention across examples) and restarted positions.
                torch.testing.assert_close(logits[row, start : start + ids.shape[1]], alone, rtol=1e-5, atol=1e-5)
                start += ids.shape[1]


def test_without_position_ids_the_examples_would_see_each_other(module):
    # Guards the test above: packed rows read as one sequence give other logits.
    examples = _examples()
    batch = PackedCollator(PAD)([[examples[i] for i in PACKS[0]]])
    with torch.no_grad():
        isolated = module(batch["input_ids"], position_ids=batch["position_ids"])
        joined = module(batch["input_ids"])
    first = len(examples[PACKS[0][0]]["input_ids"])
    torch.testing.assert_close(isolated[:, :first], joined[:, :first], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(isolated[:, first:], joined[:, first:], atol=1e-3)


def _split_batch(examples: list[dict]) -> tuple[list[list], dict[str, torch.Tensor]]:
    # 34 tokens into packs of 10: examples 1, 2 and 4 are cut, 0 and 3 (behind a continuation) are not.
    packs = split_packs([len(e["input_ids"]) for e in examples], range(len(examples)), 10)
    assert packs == [[0, (1, 0, 1)], [(1, 1, 5), (2, 0, 6)], [(2, 6, 12), 3, (4, 0, 3)], [(4, 3, 7)]]
    return packs, PackedCollator(PAD)([PackedDataset(examples)[pack] for pack in packs])


def test_split_packs_lose_exactly_the_continuations_first_targets(module):
    examples = _examples()
    packs, batch = _split_batch(examples)
    cuts = [item for pack in packs for item in pack if isinstance(item, tuple) and item[1] > 0]
    lost = sum(examples[index]["labels"][start] != IGNORE_INDEX for index, start, _ in cuts)
    assert lost == 2  # example 1's cut falls in its prompt
    with torch.no_grad():
        _, packed_count = module.compute_loss(batch)
        _, unpacked_count = module.compute_loss(SFTCollator(PAD)(examples))
    assert packed_count.item() == unpacked_count.item() - lost


def test_split_packs_compute_each_piece_as_it_would_be_alone(module):
    examples = _examples()
    packs, batch = _split_batch(examples)
    with torch.no_grad():
        logits = module(batch["input_ids"], position_ids=batch["position_ids"])
        for row, pack in enumerate(packs):
            start = 0
            for item in pack:
                index, first, stop = (item, 0, len(examples[item]["input_ids"])) if isinstance(item, int) else item
                # A whole example has its unpacked logits; a piece those of its tokens alone.
                alone = module(torch.tensor([examples[index]["input_ids"][first:stop]]))[0]
                torch.testing.assert_close(logits[row, start : start + stop - first], alone, rtol=1e-5, atol=1e-5)
                start += stop - first


def test_flash_attention_refuses_several_packed_rows(module, monkeypatch):
    # transformers' flash path isolates packed examples only with one row per batch.
    monkeypatch.setattr(module.model.config, "_attn_implementation", "flash_attention_2")
    rows = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 8]])
    positions = torch.tensor([[0, 1, 0, 1], [0, 1, 2, 3]])
    with pytest.raises(ConfigError, match=r"needs data\.batch_size: 1"):
        module(rows, position_ids=positions)
