"""Loading the tokenizer that both the data module and the model module use."""

from __future__ import annotations

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_lora.source import resolve_model_folder


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


def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer, giving it a pad token when it has none.

    Padding never decides what is trained (the collator writes -100 into the labels of
    padded positions explicitly), so reusing EOS as the pad token is safe and avoids
    adding a token, which would resize the embeddings of a frozen base.

    Args:
        name_or_path: A local folder or hub id holding the tokenizer files.
        gguf_file: A GGUF file inside ``name_or_path`` whose embedded tokenizer to use.
    """
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_folder(name_or_path, gguf_file))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer
