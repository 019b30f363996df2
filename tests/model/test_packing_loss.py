"""A packed batch computes exactly what the same examples compute unpacked."""

import pytest
import torch

from lit_lora import LoRAModule
from lit_lora.data.collate import SFTCollator
from lit_lora.data.encode import IGNORE_INDEX
from lit_lora.data.packing import PackedCollator
from lit_lora.model.lora import LoRASettings
from lit_lora.model.quantization import QuantizationSettings

PAD = 1


def _examples() -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    examples = []
    for length, prompt in ((9, 4), (5, 2), (12, 6), (1, 0), (7, 3)):
        ids = torch.randint(3, 512, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        examples.append({"input_ids": ids, "labels": labels, "num_supervised": sum(x != IGNORE_INDEX for x in labels[1:])})
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
