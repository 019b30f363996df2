"""Answers to left-padded prompt batches, greedy or sampled, and the tokens that end them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lit_lora.data.collate import PromptCollator, PromptExample
from lit_lora.data.render import has_chat_template, render_chat

# The assistant's content when rendering a turn to see what the template writes after it.
_PROBE = "lit_lora_probe"


@dataclass(frozen=True)
class Sampling:
    """Sampled rather than greedy decoding, reproducible through its seed.

    Decoding settings not named here (``top_k``, repetition penalty) come from the
    model's ``generation_config.json``, else transformers' defaults (``top_k`` 50).

    Args:
        temperature: Divides the logits before sampling; below 1 sharpens the
            distribution, above 1 flattens it. Must be > 0.
        top_p: Sample only from the most likely tokens whose probabilities add up to
            ``top_p`` (nucleus sampling); 1 keeps every token.
        seed: Seeds the random draws of each call, so the same prompts in the same
            batches give the same answers.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0


def end_of_turn_token_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The special token the chat template writes after an assistant's reply, if any.

    Rendered the way training renders a reply (:func:`~lit_lora.data.render.render_chat`),
    so it is the token the model learned to end its turns with: ``<|im_end|>`` for
    ChatML, ``<|eot_id|>`` for Llama 3, which may differ from the tokenizer's EOS.

    Args:
        tokenizer: The tokenizer the adapter trained with.

    Returns:
        The first special token after the reply, or None when the tokenizer has no chat
        template or the template ends a reply with ordinary text only.
    """
    if not has_chat_template(tokenizer):
        return None
    conversation = [
        {"role": "user", "content": "?"},
        {"role": "assistant", "content": _PROBE},
    ]
    # The last segment is the trained one: the reply and the end-of-turn text after it.
    reply = render_chat(conversation, tokenizer)[-1].text
    tail = reply[reply.index(_PROBE) + len(_PROBE) :]
    special = {index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    special.update(tokenizer.all_special_ids)
    return next(
        (index for index in tokenizer(tail, add_special_tokens=False)["input_ids"] if index in special),
        None,
    )


def end_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids that end an answer: the tokenizer's EOS and the chat template's end of turn.

    Args:
        tokenizer: The tokenizer the adapter trained with.
    """
    candidates = (tokenizer.eos_token_id, end_of_turn_token_id(tokenizer))
    return list(dict.fromkeys(index for index in candidates if index is not None))


def _model_eos_ids(model: PreTrainedModel) -> list[int]:
    """The EOS ids of the model's generation config, which may hold one id, several or none."""
    eos = model.generation_config.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    stop_token_ids: Sequence[int] | None = None,
) -> list[str]:
    """Continue each prompt, greedily or sampled, and return only the new text.

    Args:
        model: A causal LM (a PEFT model generates with its active adapter).
        tokenizer: Its tokenizer, to decode and to know the pad token.
        input_ids: ``(B, T)`` prompt ids, left-padded so every prompt ends at ``T``.
        attention_mask: ``(B, T)`` 1 for prompt tokens, 0 for padding.
        max_new_tokens: Upper bound on generated tokens per prompt.
        sampling: Sample with these settings; None decodes greedily.
        stop_token_ids: Tokens that end an answer besides the EOS ids of the model's
            generation config (see :func:`end_token_ids`); None stops at those alone.

    Returns:
        The ``B`` continuations, decoded without special tokens.
    """
    options = {"do_sample": sampling is not None}
    if sampling is not None:
        options.update(temperature=sampling.temperature, top_p=sampling.top_p)
    if stop_token_ids is not None:
        options["eos_token_id"] = list(dict.fromkeys([*_model_eos_ids(model), *stop_token_ids]))
    was_training = model.training
    model.eval()
    # Sampling draws from the global generator; forking it keeps the caller's random
    # state untouched and makes each call depend on the seed alone.
    devices = [input_ids.device] if input_ids.is_cuda else []
    try:
        with torch.random.fork_rng(devices=devices, enabled=sampling is not None):
            if sampling is not None:
                torch.manual_seed(sampling.seed)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                # Checkpointed training turns the KV cache off; generation needs it back.
                use_cache=True,
                **options,
            )
    finally:
        model.train(was_training)
    return tokenizer.batch_decode(output[:, input_ids.size(1) :], skip_special_tokens=True)


def answer_prompts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[PromptExample],
    batch_size: int,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    stop_token_ids: Sequence[int] | None = None,
) -> list[str]:
    """Answer tokenized prompts in left-padded batches with the model's active adapter.

    Args:
        model: A causal LM on its device.
        tokenizer: Its tokenizer, to decode and to know the pad token.
        prompts: Prompt ids (and references, unused here) in the order to answer them.
        batch_size: Prompts generated at once.
        max_new_tokens: Upper bound on generated tokens per prompt.
        sampling: Sample with these settings; None decodes greedily.
        stop_token_ids: Tokens that end an answer, as for :func:`generate_texts`.

    Returns:
        One answer per prompt, in order.
    """
    collate = PromptCollator(tokenizer.pad_token_id)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch = collate(prompts[start : start + batch_size])
        answers += generate_texts(
            model,
            tokenizer,
            batch["input_ids"].to(model.device),
            batch["attention_mask"].to(model.device),
            max_new_tokens,
            sampling,
            stop_token_ids,
        )
    return answers
