"""Per-example loss weights: a `weight` column in the data scales each example's tokens."""

import torch.nn.functional as F

from lit_lora import LoRAModule
from lit_lora.data import SFTCollator, SFTDataModule


class WeightedCollator(SFTCollator):
    def __call__(self, examples):
        batch = super().__call__(examples)
        batch["weight"] = batch["input_ids"].new_tensor([e["weight"] for e in examples]).float()
        return batch


class WeightedSFTDataModule(SFTDataModule):
    """SFT data whose rows carry a `weight` (1.0 when missing)."""

    example_columns = (*SFTDataModule.example_columns, "weight")

    def encode_row(self, row, index, format, source, path):
        weight = row.get("weight")  # None where a row has no weight
        example = super().encode_row(row, index, format, source, path)
        return {**example, "weight": 1.0 if weight is None else float(weight)}

    def collator(self):
        return WeightedCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)


class WeightedLoRAModule(LoRAModule):
    """Token cross-entropy, each example's tokens scaled by its weight.

    Args:
        max_weight: Weights above this are clipped to it, so one row cannot dominate a step.
    """

    def __init__(self, *args, max_weight: float = 5.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_weight = max_weight

    def compute_loss(self, batch):
        # Return (sum of per-token losses, token count): the module divides by the
        # tokens of the whole optimizer step, across micro-batches and devices.
        logits = self(batch["input_ids"], batch["attention_mask"])[:, :-1].float()
        targets = batch["labels"][:, 1:]
        losses = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        weights = batch["weight"].clamp(max=self.max_weight).unsqueeze(1)
        return (losses * weights).sum(), (targets != -100).sum()
