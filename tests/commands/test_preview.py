"""``python -m lit_lora preview``: trained text highlighted per format, colour, statistics, no model, errors.

Runs configs/tiny.yaml (the tiny Llama's ChatML tokenizer) on small handmade files.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import transformers

import lit_lora.model.loading
from lit_lora import LoRAModule
from lit_lora.cli import main
from lit_lora.data.stats import format_stats

REPO = Path(__file__).resolve().parents[2]

PROMPT_COMPLETION = {"prompt": "Hi", "completion": "Hello there"}
CHAT_PROMPT_COMPLETION = "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello there<|im_end|>\n]]"

FORMATS = {
    "prompt_completion": ([PROMPT_COMPLETION], [], CHAT_PROMPT_COMPLETION),
    "alpaca": (
        [{"instruction": "Say hi", "input": "", "output": "Hi"}],
        [],
        "<s><|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n[[Hi<|im_end|>\n]]",
    ),
    # Every assistant turn is trained, each with the end-of-turn text after it.
    "messages": (
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief"},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Bye now"},
                ]
            }
        ],
        [],
        (
            "<s><|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "[[Hello<|im_end|>\n]]<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n[[Bye now<|im_end|>\n]]"
        ),
    ),
    # Documents: BOS from the tokenizer, no template, everything and EOS trained.
    "text": ([{"text": "Hello there"}], [], "<s>[[Hello there<|im_end|>]]"),
    "sharegpt": (
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}],
        [],
        "<s><|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n[[Hello<|im_end|>\n]]",
    ),
    "conversational_prompt_completion": (
        [
            {
                "prompt": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hi"}],
                "completion": [{"role": "assistant", "content": "Hello"}],
            }
        ],
        [],
        (
            "<s><|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "[[Hello<|im_end|>\n]]"
        ),
    ),
    # A reply marked train: false is context; the system prompt goes first.
    "messages_context_and_system_prompt": (
        [
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello", "train": False},
                    {"role": "user", "content": "Bye"},
                    {"role": "assistant", "content": "Bye now"},
                ]
            }
        ],
        ["--data.init_args.system_prompt", "Be brief"],
        (
            "<s><|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
            "Hello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n[[Bye now<|im_end|>\n]]"
        ),
    ),
    # The plain template: BOS from the tokenizer, EOS closing the response.
    "alpaca_plain": (
        [{"instruction": "Say hi", "input": "", "output": "Hi"}],
        ["--data.init_args.template", "plain"],
        (
            "<s>Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nSay hi\n\n### Response:\n[[Hi<|im_end|>]]"
        ),
    ),
}


@pytest.fixture(autouse=True)
def in_repo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # configs/tiny.yaml names repo-relative paths; datasets' cache stays out of the user's.
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))


def write_rows(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def preview(train_file: str, *options: str, val_file: str = "null") -> str:
    """Run ``preview`` on configs/tiny.yaml with another training file; returns what it printed."""
    args = ["preview", "--config", "configs/tiny.yaml", "--data.init_args.train_file", train_file]
    return main([*args, "--data.init_args.val_file", val_file, *options])


@pytest.mark.parametrize("name", FORMATS)
def test_trained_text_is_between_markers(name: str, tmp_path: Path) -> None:
    rows, options, highlighted = FORMATS[name]
    printed = preview(write_rows(tmp_path / "train.jsonl", rows), *options, "--color", "never")
    example, stats = printed.split("\n\n=== Data statistics ===\n")
    assert stats.splitlines()[1].startswith("train     1     1        0          0")
    header, text = example.split("\n", 1)
    assert header.startswith("=== train example 1 of 1: ") and header.endswith(" trained (between [[ and ]]) ===")
    assert text == highlighted


def test_forced_colour_highlights_in_green(tmp_path: Path) -> None:
    printed = preview(write_rows(tmp_path / "train.jsonl", [PROMPT_COMPLETION]), "--color", "always")
    assert "assistant\n\x1b[32mHello there<|im_end|>\n\x1b[0m\n\n" in printed
    assert "[[" not in printed


def test_markers_when_not_printing_to_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    printed = preview(write_rows(tmp_path / "train.jsonl", [PROMPT_COMPLETION]))
    assert CHAT_PROMPT_COMPLETION in printed
    assert capsys.readouterr().out == printed + "\n"


@pytest.mark.filterwarnings("ignore:.*dropped 1 of 3 examples")
def test_statistics_of_every_split_follow_the_examples(tmp_path: Path) -> None:
    # With max_length 20 the 20-token example fits, the longer one is cut (9 of its 20
    # tokens trained), and the one whose prompt alone fills 20 tokens is dropped.
    rows = [
        PROMPT_COMPLETION,
        {"prompt": "Hi", "completion": "Hello there " * 4},
        {"prompt": "Hi " * 20, "completion": "ok"},
    ]
    train_file = write_rows(tmp_path / "train.jsonl", rows)
    val_file = write_rows(tmp_path / "val.jsonl", [PROMPT_COMPLETION])
    printed = preview(
        train_file, "--data.init_args.max_length", "20", "--num_examples", "1", "--color", "never", val_file=val_file
    )
    assert printed.count("=== train example") == 1
    assert "=== train example 1 of 2: 20 tokens, 9 trained" in printed
    stats = printed.split("=== Data statistics ===\n")[1]
    assert stats.splitlines()[:3] == [
        "split       rows  kept  dropped  truncated  p50  p90  p99  max  supervised",
        "train          3     2        1          1   20   20   20   20       45.0%",
        "validation     1     1        0          0   20   20   20   20       45.0%",
    ]
    assert stats.endswith(format_stats({}).split("\n", 1)[1])


def test_no_model_is_built_or_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("preview must not build or load the model")

    monkeypatch.setattr(lit_lora.model.loading, "load_base_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(LoRAModule, "__init__", refuse)
    monkeypatch.setattr(LoRAModule, "configure_model", refuse)
    assert "[[Hello there" in preview(write_rows(tmp_path / "train.jsonl", [PROMPT_COMPLETION]), "--color", "never")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--data.init_args.max_length", "0"], "data.max_length: 0 is below 1"),
        (["--split", "validation"], "split: the validation split has no data"),
        (["--num_examples", "-1"], "num_examples: -1 is below 0"),
        # The model's source is checked as fit checks it, before the tokenizer is loaded from it.
        (
            ["--model.init_args.model_name_or_path", "assets/missing"],
            f"model.model_name_or_path: 'assets/missing' is a local path, and {REPO / 'assets' / 'missing'} "
            "does not exist. Fix:",
        ),
    ],
)
def test_bad_settings_exit_2_with_the_fix(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        preview(write_rows(tmp_path / "train.jsonl", [PROMPT_COMPLETION]), *options)
    assert exit_info.value.code == 2
    assert f"lit_lora: error: {message}" in capsys.readouterr().err


def test_unknown_option_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        preview(write_rows(tmp_path / "train.jsonl", [PROMPT_COMPLETION]), "--data.init_args.max_lenght", "9")
    assert exit_info.value.code == 2
    assert "max_lenght" in capsys.readouterr().err
