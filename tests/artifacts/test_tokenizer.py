"""Loading the tokenizer: where it comes from, and the pad token it gets when it has none."""

import os
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from lit_lora.artifacts import tokenizer as tokenizer_module
from lit_lora.artifacts.tokenizer import load_tokenizer, one_thread_per_process, tokenizer_source


def test_tokenizer_source_prefers_a_separate_tokenizer():
    assert tokenizer_source("models/m", "m.gguf", None) == ("models/m", "m.gguf")
    assert tokenizer_source("models/m", "m.gguf", "tok") == ("tok", None)


def test_pad_falls_back_to_eos_and_says_why(tiny_model_dir, monkeypatch: pytest.MonkeyPatch):
    # tiny-llama's only special tokens are <s>, <|im_start|> and <|im_end|> (EOS): no spare one.
    logged = []
    monkeypatch.setattr(tokenizer_module, "rank_zero_info", logged.append)
    tokenizer_module._info_once.cache_clear()
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.padding_side == "right"
    assert logged == [
        (
            f"lit_lora: tokenizer '{tiny_model_dir}' has no pad token and no spare token to pad with; padding with "
            "EOS '<|im_end|>'. This is safe: padded positions are masked by position, so EOS is still trained."
        )
    ]


def _saved(folder: Path, vocabulary: list[str], **special: str) -> str:
    """Save a word-level tokenizer over ``vocabulary`` with the given special tokens and no pad token."""
    backend = Tokenizer(models.WordLevel({token: index for index, token in enumerate(vocabulary)}, unk_token="?"))
    PreTrainedTokenizerFast(tokenizer_object=backend, **special).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    ("vocabulary", "special", "pad"),
    [
        # Llama 3: a reserved fine-tuning pad beats <|end_of_text|> and everything else.
        (
            ["<|begin_of_text|>", "<|eot_id|>", "<|endoftext|>", "<|finetune_right_pad_id|>", "hi"],
            {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
            "<|finetune_right_pad_id|>",
        ),
        # ChatML: <|endoftext|> is spare when EOS is <|im_end|>.
        (["<|im_end|>", "<|endoftext|>", "hi"], {"eos_token": "<|im_end|>"}, "<|endoftext|>"),
        # GPT-2 style: <|endoftext|> is EOS itself, so the unknown token pads.
        (["<|endoftext|>", "<unk>", "hi"], {"eos_token": "<|endoftext|>", "unk_token": "<unk>"}, "<unk>"),
        # Llama 2: pad with <unk>, never with BOS.
        (["<unk>", "<s>", "</s>", "hi"], {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, "<unk>"),
        # The unknown token is EOS: nothing spare, so EOS.
        (["</s>", "hi"], {"eos_token": "</s>", "unk_token": "</s>"}, "</s>"),
    ],
)
def test_pad_is_an_existing_token_other_than_eos_and_bos(
    tmp_path: Path, vocabulary: list[str], special: dict, pad: str
) -> None:
    tokenizer = load_tokenizer(_saved(tmp_path, vocabulary, **special))
    assert tokenizer.pad_token == pad
    assert tokenizer.pad_token_id == vocabulary.index(pad)
    assert len(tokenizer) == len(vocabulary)  # nothing added, so the embeddings keep their size


def test_an_existing_pad_token_is_kept(tmp_path: Path) -> None:
    path = _saved(tmp_path, ["</s>", "<pad>", "<|endoftext|>"], eos_token="</s>", pad_token="<|endoftext|>")
    assert load_tokenizer(path).pad_token == "<|endoftext|>"


@pytest.mark.parametrize("before", [None, "true"])
def test_one_thread_per_process_restores_the_setting(monkeypatch: pytest.MonkeyPatch, before: str | None) -> None:
    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    with one_thread_per_process():
        assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
