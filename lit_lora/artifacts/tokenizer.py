"""Loading the tokenizer that both the data module and the model module use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from lightning.pytorch.utilities import rank_zero_info
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_lora.artifacts.location import loadable
from lit_lora.artifacts.source import check_model_source, gguf_tokenizer_folder
from lit_lora.errors import ConfigError


def tokenizer_source(
    model_name_or_path: str, gguf_file: str | None, tokenizer_name_or_path: str | None
) -> tuple[str, str | None]:
    """Where the tokenizer of a model comes from: ``(name_or_path, gguf_file)``.

    A separate tokenizer folder wins; otherwise the model's own files, including the
    tokenizer embedded in its GGUF file.
    """
    if tokenizer_name_or_path is not None:
        return tokenizer_name_or_path, None
    return model_name_or_path, gguf_file


# Tokens already in many vocabularies that are made for padding or harmless there,
# most specific first: Llama 3's reserved fine-tuning pad, the usual pad spellings,
# and GPT-style end of text (for ChatML models whose EOS is <|im_end|>).
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|pad|>", "<pad>", "[PAD]", "<|endoftext|>")


def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer, giving it a pad token when it has none (see ``choose_pad_token``).

    Args:
        name_or_path: A local folder or hub id holding the tokenizer files.
        gguf_file: A GGUF file inside ``name_or_path`` whose embedded tokenizer to use.
    """
    # A GGUF file's tokenizer alone, without dequantizing the model (which the model loads later).
    folder = gguf_tokenizer_folder(name_or_path, gguf_file) if gguf_file else loadable(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = choose_pad_token(tokenizer)
        _info_once(_pad_message(tokenizer))
    tokenizer.padding_side = "right"
    return tokenizer


def load_data_tokenizer(name_or_path: str | None, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """:func:`load_tokenizer` for a data module, whose ``data.tokenizer_name_or_path`` the CLI fills in.

    Raises:
        ConfigError: No tokenizer is set, naming the settings that provide one, or the
            local folder it names does not exist.
    """
    if name_or_path is None:
        raise ConfigError(
            "data.tokenizer_name_or_path is not set, so there is no tokenizer to prepare the data with. "
            "Fix: set model.model_name_or_path (the CLI copies it here), or set data.tokenizer_name_or_path."
        )
    check_model_source(name_or_path, gguf_file, field="data.tokenizer_name_or_path")
    return load_tokenizer(name_or_path, gguf_file)


def choose_pad_token(tokenizer: PreTrainedTokenizerBase) -> str:
    """Pick a pad token from the tokenizer's own vocabulary, never adding one.

    A new token would resize the embeddings of a frozen base model. Preferred is the
    first of ``PAD_CANDIDATES`` in the vocabulary, then the unknown token, as long as it
    is neither EOS nor BOS, so a pad id never reads as the end or start of a text.
    Failing that, EOS: still safe for training, because the collator masks padded
    positions by position (label -100, attention 0), so EOS itself stays trained.

    Args:
        tokenizer: A tokenizer with an EOS token.
    """
    vocabulary = tokenizer.get_vocab()
    reserved = {tokenizer.eos_token, tokenizer.bos_token}
    for token in (*PAD_CANDIDATES, tokenizer.unk_token):
        if token is not None and token in vocabulary and token not in reserved:
            return token
    return tokenizer.eos_token


def _pad_message(tokenizer: PreTrainedTokenizerBase) -> str:
    name = f"tokenizer '{tokenizer.name_or_path}' has no pad token"
    if tokenizer.pad_token != tokenizer.eos_token:
        return f"lit_lora: {name}; padding with its existing token {tokenizer.pad_token!r} (not EOS or BOS)."
    return (
        f"lit_lora: {name} and no spare token to pad with; padding with EOS {tokenizer.eos_token!r}. "
        "This is safe: padded positions are masked by position, so EOS is still trained."
    )


@cache
def _info_once(message: str) -> None:
    # The data module and the model module each load the tokenizer; say it once.
    rank_zero_info(message)


@contextmanager
def one_thread_per_process() -> Iterator[None]:
    """Keep each process's tokenizer calls on one thread while the block runs.

    Tokenizing a dataset calls the tokenizer once per example with a few short
    texts; fanning each call out over a thread pool costs more than it saves (about
    twice the time), and the processes of ``num_proc`` already use the cores.
    Worker processes started inside the block inherit the setting.
    """
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
