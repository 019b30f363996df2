"""What the model is called with: padded rows, or packed rows told apart by their positions."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from lit_lora.errors import ConfigError


def model_inputs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
) -> dict[str, Any]:
    """The keyword arguments of a forward pass over a padded or a packed batch.

    Args:
        model: The model to be called (its attention kernel decides what packing allows).
        input_ids: ``(B, T)`` token ids.
        attention_mask: ``(B, T)``, 0 on padding; ``None`` for packed rows.
        position_ids: ``(B, T)`` positions restarting at 0 for each packed example
            (``lit_lora.data.packing``), or ``None`` for padded rows.

    Raises:
        ConfigError: Several packed rows per batch under flash attention.
    """
    if position_ids is None:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    if input_ids.size(0) > 1 and model.config._attn_implementation.startswith("flash"):
        # transformers' flash path isolates packed examples only in its padding-free
        # mode, one row per batch; several rows would attend across examples.
        raise ConfigError(
            "data.packing with model.attn_implementation flash_attention_2 needs data.batch_size: 1 "
            "(one packed row per batch; raise data.max_length instead), or use attn_implementation sdpa."
        )
    # transformers derives the packed-sequence mask from position_ids only without a
    # KV cache, and a model may have use_cache on in its config.
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "use_cache": False}
