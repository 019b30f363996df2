"""Tokenizers built in code and saved to disk, loaded through ``lit_lora.artifacts.tokenizer.load_tokenizer``.

Both tokenizers add ``<s>`` when called with special tokens, like Llama's: the chat one
also writes ``{{ bos_token }}`` in its template, the setup that doubles BOS when a
pipeline adds both.
"""

from __future__ import annotations

import datasets
import pytest
from transformers import PreTrainedTokenizerBase

from lit_lora.artifacts.tokenizer import load_tokenizer
from tests.helpers.sft import CHATML, REVERSED, save_tokenizer


@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep the Arrow files `datasets` writes out of the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        yield


@pytest.fixture(scope="session")
def chat_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """ChatML template starting with ``{{ bos_token }}``; eos ``<|im_end|>``; no pad token."""
    return save_tokenizer(tmp_path_factory.mktemp("chat"), "<|im_end|>", CHATML)


@pytest.fixture(scope="session")
def plain_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """No chat template; eos ``</s>``; no pad token."""
    return save_tokenizer(tmp_path_factory.mktemp("plain"), "</s>", None)


@pytest.fixture(scope="session")
def reversed_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A chat template that rewrites history, so prefix diffing must refuse it."""
    return save_tokenizer(tmp_path_factory.mktemp("reversed"), "<|im_end|>", REVERSED)


@pytest.fixture(scope="session")
def chat_tokenizer(chat_path: str) -> PreTrainedTokenizerBase:
    return load_tokenizer(chat_path)


@pytest.fixture(scope="session")
def plain_tokenizer(plain_path: str) -> PreTrainedTokenizerBase:
    return load_tokenizer(plain_path)
