"""Greedy generation from a batch of left-padded prompts."""

from __future__ import annotations

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
) -> list[str]:
    """Greedily continue each prompt and return only the new text.

    Args:
        model: A causal LM (a PEFT model generates with its active adapter).
        tokenizer: Its tokenizer, to decode and to know the pad token.
        input_ids: ``(B, T)`` prompt ids, left-padded so every prompt ends at ``T``.
        attention_mask: ``(B, T)`` 1 for prompt tokens, 0 for padding.
        max_new_tokens: Upper bound on generated tokens per prompt.

    Returns:
        The ``B`` continuations, decoded without special tokens.
    """
    was_training = model.training
    model.eval()
    try:
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            # Checkpointed training turns the KV cache off; generation needs it back.
            use_cache=True,
        )
    finally:
        model.train(was_training)
    return tokenizer.batch_decode(output[:, input_ids.size(1) :], skip_special_tokens=True)
