"""``python -m lit_lora generate``: answers side by side, exactness, prompts, stopping, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
import yaml
from peft import PeftModel
from transformers import AutoConfig, AutoModelForCausalLM

import lit_lora.model.generation
from lit_lora.artifacts.adapter_dir import BaseModelSpec
from lit_lora.artifacts.tokenizer import load_tokenizer
from lit_lora.cli import main
from lit_lora.commands.generate import name_variants
from lit_lora.data import SFTDataModule
from lit_lora.model.generation import (
    Sampling,
    end_of_turn_token_id,
    end_token_ids,
    generate_texts,
)
from lit_lora.model.loading import load_base_model
from lit_lora.model.quantization import QuantizationSettings

PROMPTS = ["Name a colour.", "What is 2+2? Answer: briefly"]
IM_END = 2  # <|im_end|> in the tiny tokenizer, also its EOS


def run(adapters, *options: str):
    """``python -m lit_lora generate`` with the adapters and options; returns its records."""
    args = ["generate"]
    for adapter in adapters:
        args += ["--adapters+", str(adapter)]
    return main(args + list(options))


def with_prompts(prompts: list[str]) -> list[str]:
    return [option for prompt in prompts for option in ("--prompts+", prompt)]


def training_prompt_ids(tokenizer_dir: Path, prompts: list[str], tmp_path: Path) -> list[list[int]]:
    """What training's data module feeds the model for each prompt as a one-turn conversation."""
    path = tmp_path / "training_rows.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": "x"},
            ]
        }
        for prompt in prompts
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = SFTDataModule(
        train_file=str(path),
        predict_file=str(path),
        tokenizer_name_or_path=str(tokenizer_dir),
    )
    return [example.prompt_ids for example in data.prompt_examples("predict")]


def direct_greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """One unpadded prompt through Hugging Face generate, stopping at ``<|im_end|>``."""
    output = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=[IM_END],
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(output[0, len(ids) :], skip_special_tokens=True)


def test_adapters_and_base_answer_side_by_side_exactly_as_direct_peft_models(tiny_adapters, tmp_path, capsys):
    first, second = tiny_adapters
    records = run(
        tiny_adapters,
        *with_prompts(PROMPTS),
        "--include_base",
        "true",
        "--max_new_tokens",
        "4",
    )
    out = capsys.readouterr().out

    assert [list(record["answers"]) for record in records] == [["a", "b", "base"]] * len(PROMPTS)
    answers = {label: [record["answers"][label] for record in records] for label in ("a", "b", "base")}
    assert answers["a"] != answers["b"]

    spec = BaseModelSpec.of_adapter(first)
    tokenizer = load_tokenizer(str(first))
    ids = training_prompt_ids(first, PROMPTS, tmp_path)
    for label, adapter in (("a", first), ("b", second), ("base", None)):
        model = load_base_model(spec.folder(), spec.quantization, torch.device("cpu"))
        if adapter is not None:
            model = PeftModel.from_pretrained(model, adapter)
        assert answers[label] == [direct_greedy(model, tokenizer, prompt_ids, 4) for prompt_ids in ids]

    for number, (prompt, record) in enumerate(zip(PROMPTS, records), start=1):
        block = f"=== prompt {number} of {len(PROMPTS)} ===\n{prompt}\n"
        block += "".join(f"--- {label} ---\n{record['answers'][label]}\n" for label in ("a", "b", "base"))
        assert block in out + "\n"


def test_output_is_one_json_line_per_prompt_with_every_variant(tiny_adapters, tmp_path):
    prompt_file = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "Say yes.", "completion": "yes"},
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ]
        },
        {
            "messages": [
                {"role": "user", "content": "Sum 1 2"},
                {"role": "assistant", "content": "3"},
            ]
        },
    ]
    prompt_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = tmp_path / "answers" / "out.jsonl"

    records = run(
        tiny_adapters,
        "--prompt_file",
        str(prompt_file),
        "--output",
        str(output),
        "--max_new_tokens",
        "2",
    )

    lines = [json.loads(line) for line in output.read_text().splitlines()]
    assert lines == records
    assert [set(line["answers"]) for line in lines] == [{"a", "b"}] * 3
    assert all(isinstance(answer, str) for line in lines for answer in line["answers"].values())
    assert {key: lines[0][key] for key in ("prompt", "reference")} == {
        "prompt": "Say yes.",
        "reference": "yes",
    }
    assert lines[1]["messages"] == rows[1]["messages"] and "reference" not in lines[1]
    assert lines[2]["messages"] == rows[2]["messages"][:1] and lines[2]["reference"] == "3"


def test_prompt_ids_are_training_prompt_ids_for_given_and_file_prompts(tiny_adapters, tmp_path, monkeypatch):
    fed = []

    def spy(model, tokenizer, input_ids, attention_mask, *args):
        fed.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask))
        return generate_texts(model, tokenizer, input_ids, attention_mask, *args)

    monkeypatch.setattr(lit_lora.model.generation, "generate_texts", spy)
    prompt_file = tmp_path / "prompts.txt"
    prompt_file.write_text("Hello there\n\nHow are you?\n")

    records = run(
        tiny_adapters[:1],
        "--prompts+",
        PROMPTS[1],
        "--prompt_file",
        str(prompt_file),
        "--max_new_tokens",
        "1",
    )

    prompts = [PROMPTS[1], "Hello there", "How are you?"]
    assert [record["prompt"] for record in records] == prompts
    assert fed == training_prompt_ids(tiny_adapters[0], prompts, tmp_path)


def test_end_of_turn_token_comes_from_the_chat_template(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    assert end_of_turn_token_id(tokenizer) == IM_END
    assert end_token_ids(tokenizer) == [IM_END]

    # An EOS that is not the end of a turn, as in many base models.
    tokenizer.eos_token = "<s>"
    assert end_token_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<s>"), IM_END]

    tokenizer.chat_template = None
    assert end_of_turn_token_id(tokenizer) is None
    assert end_token_ids(tokenizer) == [tokenizer.eos_token_id]


def tiny_model(tiny_model_dir) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir)).eval()


def test_generation_stops_at_the_end_of_turn_token(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    # So that only the chat template's end of turn can stop the answer.
    tokenizer.eos_token = "<s>"
    model = tiny_model(tiny_model_dir)
    model.generation_config.eos_token_id = None
    prompt = torch.tensor([tokenizer("Hello there")["input_ids"]])
    mask = torch.ones_like(prompt)
    free = model.generate(input_ids=prompt, attention_mask=mask, max_new_tokens=8, do_sample=False)[0, prompt.size(1) :]
    # Give <|im_end|> the output row of a token the free run picks: the two then tie and
    # greedy picks the lower id, <|im_end|>, where the free run picked that token.
    stop_at = next(
        k for k in range(2, 8) if free[k] > IM_END and free[k] not in free[:k] and IM_END not in free[: k + 1]
    )
    with torch.no_grad():
        model.lm_head.weight[IM_END] = model.lm_head.weight[free[stop_at]]

    def answer(stop_token_ids):
        return generate_texts(model, tokenizer, prompt, mask, 8, stop_token_ids=stop_token_ids)[0]

    stopped = tokenizer.decode(free[:stop_at])
    assert answer(end_token_ids(tokenizer)) == stopped
    # Without it nothing stops the answer: <|im_end|> is left out of the text, which goes on.
    assert answer(None).startswith(stopped) and answer(None) != stopped


def test_sampling_is_reproducible_and_leaves_the_global_generator_alone(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    model = tiny_model(tiny_model_dir)
    prompt = torch.tensor([tokenizer("Hello there")["input_ids"]] * 2)
    mask = torch.ones_like(prompt)

    def sample(seed: int) -> list[str]:
        return generate_texts(model, tokenizer, prompt, mask, 12, Sampling(temperature=1.5, seed=seed), [])

    state = torch.random.get_rng_state()
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_unquantized_base_answers_as_the_adapter_on_full_precision_weights(tiny_adapters, tmp_path):
    adapter = tiny_adapters[0]
    records = run(
        [adapter],
        *with_prompts(PROMPTS[:1]),
        "--quantized",
        "false",
        "--max_new_tokens",
        "6",
    )

    spec = BaseModelSpec.of_adapter(adapter)
    base = load_base_model(spec.folder(), QuantizationSettings(mode="none"), torch.device("cpu"))
    assert not any(isinstance(module, bnb.nn.Linear4bit) for module in base.modules())
    model = PeftModel.from_pretrained(base, adapter)
    ids = training_prompt_ids(adapter, PROMPTS[:1], tmp_path)[0]
    assert records[0]["answers"]["a"] == direct_greedy(model, load_tokenizer(str(adapter)), ids, 6)


def test_cli_sampling_repeats_with_its_seed_and_greedy_ignores_temperature(
    tiny_adapters,
):
    # The unquantized base keeps these four runs fast; sampling does not depend on it.
    options = [*with_prompts(PROMPTS), "--max_new_tokens", "6", "--quantized", "false"]
    hot = ["--temperature", "3.0", "--top_p", "0.9"]
    sampling = ["--sample", "true", *hot, "--seed", "7"]

    greedy = run(tiny_adapters, *options)
    assert run(tiny_adapters, *options, *hot) == greedy
    sampled = run(tiny_adapters, *options, *sampling)
    assert run(tiny_adapters, *options, *sampling) == sampled
    assert sampled != greedy


def adapter_on_another_base(tiny_adapters, tmp_path) -> Path:
    folder = shutil.copytree(tiny_adapters[1], tmp_path / "other")
    config = yaml.safe_load((folder / "training_config.yaml").read_text())
    config["model"]["init_args"]["seed"] = 5  # other random base weights
    (folder / "training_config.yaml").write_text(yaml.safe_dump(config))
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no prompts", "--prompts: there is no prompt"),
        ("missing prompt file", "--prompt_file: "),
        ("not an adapter", "--adapters: "),
        ("another base", "must share their base"),
        ("bad jsonl row", "line 2: the row has no 'prompt' or 'messages' field"),
        ("bad temperature", "--temperature: 0.0 is not above 0"),
    ],
)
def test_bad_input_fails_with_the_option_and_the_fix_before_loading(
    case, message, tiny_adapters, tmp_path, monkeypatch, capsys
):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded despite bad input")

    monkeypatch.setattr("lit_lora.model.pretrained.load_base_model", refuse)
    bad_rows = tmp_path / "rows.jsonl"
    bad_rows.write_text('{"prompt": "ok"}\n{"question": "no"}\n')
    adapters, options = list(tiny_adapters), with_prompts(PROMPTS)
    if case == "no prompts":
        options = []
    elif case == "missing prompt file":
        options = ["--prompt_file", str(tmp_path / "missing.txt")]
    elif case == "not an adapter":
        adapters[1] = tmp_path
    elif case == "another base":
        adapters[1] = adapter_on_another_base(tiny_adapters, tmp_path)
    elif case == "bad jsonl row":
        options = ["--prompt_file", str(bad_rows)]
    else:
        options += ["--sample", "true", "--temperature", "0"]

    with pytest.raises(SystemExit) as exit_info:
        run(adapters, *options)

    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("lit_lora: error: ") and message in error


def test_variant_labels_are_folder_names_with_parents_where_they_clash(tmp_path):
    folders = [
        tmp_path / "run1" / "adapter",
        tmp_path / "run2" / "adapter",
        tmp_path / "base",
    ]
    variants = name_variants(folders, include_base=True)
    assert [variant.label for variant in variants] == [
        "run1/adapter",
        "run2/adapter",
        f"{tmp_path.name}/base",
        "base",
    ]
    assert variants[-1].adapter_name is None
    assert len({variant.adapter_name for variant in variants}) == len(variants)


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for option in (
        "--adapters",
        "--prompts",
        "--prompt_file",
        "--include_base",
        "--output",
        "--max_new_tokens",
        "--sample",
        "--temperature",
        "--top_p",
        "--seed",
        "--batch_size",
        "--quantized",
        "--base",
        "--gguf_file",
        "--device",
    ):
        assert option in text
    assert "one line per prompt" in text and "end-of-turn token" in text and "greedily" in text
