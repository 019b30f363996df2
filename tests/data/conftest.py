"""Tokenizers built in code and saved to disk, loaded through ``lit_lora.artifacts.tokenizer.load_tokenizer``.

Both tokenizers add ``<s>`` when called with special tokens, like Llama's: the chat one
also writes ``{{ bos_token }}`` in its template, the setup that doubles BOS when a
pipeline adds both.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from transformers import PreTrainedTokenizerBase

from lit_lora.artifacts.tokenizer import load_tokenizer
from tests.helpers.sft import CHATML, ESCAPING, NO_SYSTEM, REVERSED, TOOL_CHATML, save_tokenizer


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
def tools_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chat tokenizer with a template that renders tools and tool calls (``TOOL_CHATML``)."""
    return save_tokenizer(tmp_path_factory.mktemp("tools"), "<|im_end|>", TOOL_CHATML)


@pytest.fixture(scope="session")
def no_system_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chat tokenizer with a template that raises on a system turn."""
    return save_tokenizer(tmp_path_factory.mktemp("no_system"), "<|im_end|>", NO_SYSTEM)


@pytest.fixture(scope="session")
def escaping_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The chat tokenizer with a template that HTML-escapes contents."""
    return save_tokenizer(tmp_path_factory.mktemp("escaping"), "<|im_end|>", ESCAPING)


@pytest.fixture(scope="session")
def smollm2_path(gguf_dir: Path) -> str:
    """SmolLM2-135M-Instruct's tokenizer (ChatML, no BOS) read from its GGUF file and saved alone.

    Read with transformers' GGUF tokenizer loader, without converting the weights, as
    lit_lora's data module reads it (``gguf_tokenizer_folder``).
    """
    from lit_lora.artifacts.source import gguf_tokenizer_folder

    return str(gguf_tokenizer_folder(str(gguf_dir), next(gguf_dir.glob("*.gguf")).name))


@pytest.fixture(scope="session")
def chat_tokenizer(chat_path: str) -> PreTrainedTokenizerBase:
    return load_tokenizer(chat_path)


@pytest.fixture(scope="session")
def plain_tokenizer(plain_path: str) -> PreTrainedTokenizerBase:
    return load_tokenizer(plain_path)
