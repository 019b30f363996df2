"""``python -m lit_lora evaluate``: lm-eval's real harness on the tiny random Llama, offline."""

from __future__ import annotations

import inspect
import json
import math
import shutil
import socket
import sys
from pathlib import Path

import docstring_parser
import pytest
import torch
import yaml
from peft import PeftModel

from lit_lora.artifacts.adapter_dir import BaseModelSpec
from lit_lora.artifacts.tokenizer import load_tokenizer
from lit_lora.cli import main
from lit_lora.commands.evaluate import evaluate, resolve_chat_template
from lit_lora.eval_tasks.json_extraction import DATA_FILE
from lit_lora.model.loading import load_base_model

pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def network_attempts(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Refuse every connection and name lookup, recording them for the test to check."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the test allows no network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def held_out_docs(count: int) -> list[dict[str, str]]:
    """The first quickstart validation examples as prompt and answer, read straight from the data."""
    lines = (REPO / "data" / "quickstart" / "val.jsonl").read_text().splitlines()[:count]
    return [
        {"prompt": messages[0]["content"], "answer": messages[1]["content"]}
        for messages in (json.loads(line)["messages"] for line in lines)
    ]


@torch.no_grad()
def answer_scores(model: torch.nn.Module, tokenizer, docs: list[dict[str, str]]) -> tuple[float, float]:
    """Bits per byte of the answers given the chat prompts, and the share that are greedy, computed directly."""
    loglikelihood, num_bytes, greedy = 0.0, 0, 0
    for doc in docs:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": doc["prompt"]}],
            add_generation_prompt=True,
            tokenize=False,
        )
        # lm-eval moves the whitespace that ends the prompt (the assistant header's
        # newline) into the scored continuation. The template writes BOS itself.
        context = tokenizer(prompt.rstrip(), add_special_tokens=False)["input_ids"]
        ids = tokenizer(prompt + doc["answer"], add_special_tokens=False)["input_ids"]
        assert ids[: len(context)] == context
        logits = model(torch.tensor([ids])).logits[0, len(context) - 1 : -1].float()
        targets = torch.tensor(ids[len(context) :])
        loglikelihood += torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum().item()
        greedy += int(torch.equal(logits.argmax(-1), targets))
        num_bytes += len(doc["answer"].encode("utf-8"))
    return -loglikelihood / num_bytes / math.log(2), greedy / len(docs)


def scores(report: dict, run: str, task: str) -> dict[str, float]:
    """The metrics of one task in one run, without lm-eval's filter suffix."""
    results = report["runs"][run]["results"][task]
    return {key.split(",")[0]: value for key, value in results.items() if key.endswith(",none")}


def test_scores_the_shipped_task_with_and_without_the_adapter(
    tiny_adapters, tmp_path, monkeypatch, capsys, network_attempts
):
    adapter = tiny_adapters[0]
    output = tmp_path / "out" / "results.json"
    # Another directory: the shipped task must find its data file from anywhere.
    monkeypatch.chdir(tmp_path)
    report = main(
        [
            "evaluate",
            "--adapter",
            str(adapter),
            "--tasks",
            "lit_lora_json_extraction",
            "--include_base",
            "true",
            "--limit",
            "3",
            "--output",
            str(output),
        ]
    )

    base = scores(report, "base", "lit_lora_json_extraction")
    tuned = scores(report, "adapter", "lit_lora_json_extraction")
    assert math.isfinite(base["bits_per_byte"]) and math.isfinite(tuned["bits_per_byte"])
    assert base["bits_per_byte"] != pytest.approx(tuned["bits_per_byte"], rel=1e-3)
    assert report["setup"]["quantization"]["mode"] == "nf4"
    assert json.loads(output.read_text())["runs"]["adapter"]["results"] == report["runs"]["adapter"]["results"]
    assert network_attempts == []
    table = capsys.readouterr().out
    assert (
        "bits_per_byte" in table
        and f"{base['bits_per_byte']:.4f}" in table
        and f"{tuned['bits_per_byte']:.4f}" in table
    )

    # The same numbers from the models themselves: the base as training loads it, then
    # the adapter on it, with the tokenizer (and chat template) the adapter was trained with.
    spec = BaseModelSpec.of_adapter(adapter)
    model = load_base_model(spec.folder(), spec.quantization, torch.device("cpu"))
    tokenizer = load_tokenizer(str(adapter))
    docs = held_out_docs(3)
    expected_base = answer_scores(model, tokenizer, docs)
    expected_tuned = answer_scores(PeftModel.from_pretrained(model, adapter), tokenizer, docs)
    assert (base["bits_per_byte"], base["greedy_match"]) == pytest.approx(expected_base, rel=1e-4)
    assert (tuned["bits_per_byte"], tuned["greedy_match"]) == pytest.approx(expected_tuned, rel=1e-4)


def test_generation_task_on_the_unquantized_base(tiny_adapters, capsys, network_attempts):
    report = main(
        [
            "evaluate",
            "--adapter",
            str(tiny_adapters[1]),
            "--tasks",
            "lit_lora_json_extraction_gen",
            "--quantized",
            "false",
            "--limit",
            "2",
        ]
    )

    assert list(report["runs"]) == ["adapter"]
    assert report["setup"]["quantization"]["mode"] == "none"
    generated = scores(report, "adapter", "lit_lora_json_extraction_gen")
    assert {"exact_match", "json_match"} <= generated.keys()
    assert all(0.0 <= generated[name] <= 1.0 for name in ("exact_match", "json_match"))
    assert network_attempts == []
    assert "json_match" in capsys.readouterr().out


def test_shipped_data_is_the_quickstart_validation_split():
    assert DATA_FILE.read_bytes() == (REPO / "data" / "quickstart" / "val.jsonl").read_bytes()


def test_chat_template_by_default_as_the_adapter_was_trained(tiny_adapters, tmp_path):
    chat = tiny_adapters[0]
    plain = Path(shutil.copytree(chat, tmp_path / "plain"))
    config = yaml.safe_load((plain / "training_config.yaml").read_text())
    config["data"] = {"init_args": {"template": "plain"}}
    (plain / "training_config.yaml").write_text(yaml.safe_dump(config))
    tokenizer = load_tokenizer(str(chat))

    assert resolve_chat_template(None, tokenizer, chat) is True
    assert resolve_chat_template(None, tokenizer, plain) is False
    assert resolve_chat_template(True, tokenizer, plain) is True


def refuse_to_load(*args, **kwargs):
    raise AssertionError("a model was loaded before the settings were checked")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--tasks", "lit_lora_json_extractoin"],
            "--tasks: unknown task 'lit_lora_json_extractoin'",
        ),
        (
            ["--tasks", "lit_lora", "--include_path", "no/such/folder"],
            "--include_path: 'no/such/folder' is not a folder",
        ),
        (["--tasks", "lit_lora", "--limit", "0"], "--limit: 0 scores no document"),
        (["--tasks", "lit_lora", "--output", "."], "--output: '.' is a folder"),
    ],
    ids=["unknown task", "missing include path", "empty limit", "output folder"],
)
def test_bad_settings_fail_before_any_model_loads(tiny_adapters, monkeypatch, capsys, options, message):
    monkeypatch.setattr("lit_lora.model.pretrained.load_base_model", refuse_to_load)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--adapter", str(tiny_adapters[0]), *options])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    if "unknown task" in message:
        # Named as a close match, and among lit_lora's own tasks.
        assert "lit_lora_json_extraction" in error


def test_missing_adapter_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--adapter", str(tmp_path / "nowhere"), "--tasks", "lit_lora"])
    assert exit_info.value.code == 2
    assert f"--adapter: '{tmp_path / 'nowhere'}' does not exist" in capsys.readouterr().err


def test_missing_lm_eval_names_the_extra(tiny_adapters, monkeypatch, capsys):
    for name in [name for name in sys.modules if name == "lm_eval" or name.startswith("lm_eval.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--adapter", str(tiny_adapters[0]), "--tasks", "lit_lora"])
    assert exit_info.value.code == 2
    assert "pip install 'lit_lora[eval]'" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    documented = {param.arg_name: param.description for param in docstring_parser.parse(evaluate.__doc__).params}
    for name in inspect.signature(evaluate).parameters:
        assert documented.get(name), f"evaluate documents no {name}"
        assert f"--{name}" in text
    assert "lit_lora_json_extraction" in text
