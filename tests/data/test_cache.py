"""The row and tokenization caches are keyed on the file's content, lit_lora's version and the encoding settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lit_lora.data import SFTDataModule, base, cache
from lit_lora.data.cache import file_digest
from lit_lora.data.files import load_split
from tests.helpers.sft import ids, write_jsonl

PROMPT = "<s> <|im_start|> user \n Hi <|im_end|> \n <|im_start|> assistant \n"


def prepared(path: str, tokenizer: str, **settings: object) -> SFTDataModule:
    data = SFTDataModule(path, tokenizer_name_or_path=tokenizer, **settings)
    data.setup("fit")
    return data


def cache_files(data: SFTDataModule) -> dict[str, tuple[int, int]]:
    """The Arrow files the training examples are read from, with their inode and modification time."""
    files = [entry["filename"] for entry in data.dataset("train").cache_files]
    return {name: (os.stat(name).st_ino, os.stat(name).st_mtime_ns) for name in files}


def test_the_digest_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"abc")
    assert file_digest(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_file_replaced_with_the_same_size_and_mtime_is_read_and_tokenized_anew(
    tmp_path: Path, chat_path: str
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    before = os.stat(path)
    first = prepared(path, chat_path)
    write_jsonl(Path(path), [{"prompt": "Hi", "completion": "there"}])
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = prepared(path, chat_path)
    assert first.dataset("train")["input_ids"] == [ids(f"{PROMPT} Hello <|im_end|> \n")]
    assert second.dataset("train")["input_ids"] == [ids(f"{PROMPT} there <|im_end|> \n")]
    assert cache_files(first).keys().isdisjoint(cache_files(second))


def test_an_unchanged_file_is_read_and_tokenized_from_the_cache(tmp_path: Path, chat_path: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    first = cache_files(prepared(path, chat_path))
    # Touching the file changes its time, not its content: still a hit, the files untouched.
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert cache_files(prepared(path, chat_path)) == first


def test_a_changed_encoding_setting_tokenizes_anew(tmp_path: Path, chat_path: str) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    chat = prepared(path, chat_path, template="chat")
    plain = prepared(path, chat_path, template="plain")
    assert cache_files(chat).keys().isdisjoint(cache_files(plain))
    assert chat.dataset("train")["input_ids"] == [ids(f"{PROMPT} Hello <|im_end|> \n")]
    assert plain.dataset("train")["input_ids"] == [ids("<s> Hi Hello <|im_end|>")]


def test_another_lit_lora_version_reads_and_tokenizes_anew(
    tmp_path: Path, chat_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "Hi", "completion": "Hello"}])
    rows, examples = load_split(path, "data.train_file", "train").cache_files, cache_files(prepared(path, chat_path))
    monkeypatch.setattr(cache, "LIT_LORA_VERSION", "99.0")
    monkeypatch.setattr(base, "LIT_LORA_VERSION", "99.0")
    upgraded = load_split(path, "data.train_file", "train").cache_files
    assert [Path(entry["filename"]).name for entry in upgraded] == [f"json-{file_digest(Path(path))}-99.0.arrow"]
    assert upgraded != rows
    assert cache_files(prepared(path, chat_path)).keys().isdisjoint(examples)
