"""``python -m lit_lora generate``: answer prompts with one or more adapters, side by side.

Owns the command's options and their checks, reading prompts from the command line
and from files, naming the variants, loading the base once with every adapter, and
printing and writing the answers. Prompts are rendered and tokenized by
:class:`~lit_lora.data.SFTDataModule` itself, so they reach the model exactly as
training prompts did; generation itself is :mod:`lit_lora.model.generation`'s.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import datasets
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lit_lora.artifacts.adapter_dir import (
    BaseModelSpec,
    adapter_tokenizer_source,
    base_spec,
    check_adapter_dir,
    trained_quantization,
    trained_template,
)
from lit_lora.data import SFTDataModule
from lit_lora.data.collate import PromptExample
from lit_lora.data.formats import (
    FORMAT_COLUMNS,
    Conversation,
    check_messages,
    text_field,
)
from lit_lora.errors import ConfigError
from lit_lora.model.generation import Sampling, answer_prompts, end_token_ids
from lit_lora.model.loading import load_base_model
from lit_lora.model.quantization import QuantizationSettings

PromptFormat = Literal["prompt_completion", "messages"]

# The reply the data module needs to find where a prompt ends; a prompt's ids never
# depend on it, since the prompt is everything before the reply.
_STAND_IN_REPLY = "?"

# Label of the base model without adapters, with --include_base.
BASE_LABEL = "base"

PROMPT_FILE_SUFFIXES = (".txt", ".jsonl")


@dataclass(frozen=True)
class Prompt:
    """One prompt to answer, as the user gave it.

    Args:
        format: ``prompt_completion`` for a prompt text, rendered like the ``prompt``
            of a training row of that format (with a chat template: one user turn);
            ``messages`` for role/content turns, rendered like a ``messages`` row.
        value: The prompt text, or the turns before the reply.
        reference: The reply the prompt file holds for it, for scoring; None when none.
    """

    format: PromptFormat
    value: str | Conversation
    reference: str | None = None

    def fields(self) -> dict[str, Any]:
        """The prompt as a row of its format (``prompt`` or ``messages``) without the reply."""
        return {FORMAT_COLUMNS[self.format][0]: self.value}

    def data_row(self) -> dict[str, Any]:
        """The prompt as a training row of its format, with a stand-in reply."""
        if self.format == "messages":
            return {
                "messages": [
                    *self.value,
                    {"role": "assistant", "content": _STAND_IN_REPLY},
                ]
            }
        return {"prompt": self.value, "completion": _STAND_IN_REPLY}

    def display(self) -> str:
        """The prompt as printed: its text, or one ``role: content`` line per turn."""
        if self.format == "messages":
            return "\n".join(f"{turn['role']}: {turn['content']}" for turn in self.value)
        return self.value


@dataclass(frozen=True)
class Variant:
    """A model answers come from: the base with one adapter active, or the base alone.

    Args:
        label: Its name in the printed comparison and the ``--output`` records.
        adapter_name: The PEFT adapter name it activates; None for the base alone.
    """

    label: str
    adapter_name: str | None


def generate(
    adapters: list[str] | str,
    prompts: list[str] | None = None,
    prompt_file: str | None = None,
    include_base: bool = False,
    output: str | None = None,
    max_new_tokens: int = 256,
    sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    quantized: bool = True,
    base: str | None = None,
    gguf_file: str | None = None,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Answer prompts with one or more trained adapters and show the answers side by side.

    The base model is loaded once, with every adapter; each prompt is rendered with
    the chat template (or plain template) and tokenized exactly as training prompts
    were, and each answer ends at the template's end-of-turn token or at EOS. For
    every prompt, stdout shows the prompt, then one labelled answer per variant (and
    the reference, when the prompt file holds one).

    Args:
        adapters: Adapter folders written by ``fit`` (``<default_root_dir>/adapter``)
            or any PEFT LoRA adapter folders on the same base: one (``--adapters DIR``)
            or several (repeat ``--adapters+ DIR``, or ``--adapters '[a, b]'``).
            Answers are labelled with each folder's name, plus parent folders where
            names clash (``run1/adapter``).
        prompts: Prompts to answer, a list: repeat ``--prompts+ TEXT`` (also for a
            single prompt), or ``--prompts '["first", "second"]'``. Each is rendered
            like the ``prompt`` of a ``prompt_completion`` training row: one user turn
            with a chat template, the text as it is with the plain template.
        prompt_file: More prompts: a ``.txt`` file with one prompt per non-empty line,
            or a ``.jsonl`` file whose rows hold a ``prompt`` (and optionally its
            ``completion``) or ``messages`` (role/content turns; a final assistant turn
            is the reference, not part of the prompt). References are written to
            ``--output`` for scoring.
        include_base: Also answer with the base model alone, every adapter disabled,
            labelled ``base``.
        output: Also write a JSON Lines file, one line per prompt: its ``prompt`` (or
            ``messages``), ``reference`` when known, and ``answers``, a mapping of
            variant label to answer. The file is itself a valid ``--prompt_file``.
        max_new_tokens: Most tokens generated per answer; an answer ends earlier at
            the chat template's end-of-turn token (``<|im_end|>`` for ChatML) or at EOS.
        sample: Sample the answers with ``temperature`` and ``top_p``; false decodes
            greedily (the most likely token each step) and ignores both.
        temperature: Sampling temperature, > 0: below 1 sharpens the distribution,
            above 1 flattens it.
        top_p: Nucleus sampling: draw only from the most likely tokens whose
            probabilities add up to ``top_p``, in (0, 1]; 1 keeps every token.
        seed: Seed of the sampling; the same seed, prompts and ``batch_size`` give the
            same answers, and each variant draws from the same seed.
        batch_size: Prompts generated at once (left-padded).
        quantized: Load the base quantized as it was while the adapters trained (read
            from their ``training_config.yaml``), the model validation measured; false
            loads it unquantized, the weights ``merge`` folds the adapter into.
        base: Base model folder or hub id, overriding the one the adapters record
            (their ``training_config.yaml``, else PEFT's ``base_model_name_or_path``).
        gguf_file: GGUF file inside ``base`` to read the base weights from.
        device: Where the model runs, e.g. ``cuda``, ``cuda:1`` or ``cpu``; null uses
            the GPU when there is one.

    Returns:
        The records written to ``--output``, one per prompt.
    """
    adapter_dirs = check_adapters(_as_list(adapters))
    check_numbers(max_new_tokens, batch_size, temperature, top_p)
    target = check_device(device)
    output_path = check_output(output)
    requests = read_prompts(prompts or [], prompt_file)
    spec = shared_base(adapter_dirs, base, gguf_file, quantized)
    variants = name_variants(adapter_dirs, include_base)
    examples, tokenizer = encode_prompts(requests, adapter_dirs[0], spec)

    model = load_variants(spec, adapter_dirs, variants, target)
    sampling = Sampling(temperature, top_p, seed) if sample else None
    stop_ids = end_token_ids(tokenizer)
    answers = {
        variant.label: answer_with(
            model,
            variant,
            tokenizer,
            examples,
            batch_size,
            max_new_tokens,
            sampling,
            stop_ids,
        )
        for variant in variants
    }
    records = [
        {
            **prompt.fields(),
            **_reference(prompt),
            "answers": {label: texts[index] for label, texts in answers.items()},
        }
        for index, prompt in enumerate(requests)
    ]
    print(format_comparison(requests, records))
    if output_path is not None:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
    return records


def _as_list(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _reference(prompt: Prompt) -> dict[str, str]:
    return {} if prompt.reference is None else {"reference": prompt.reference}


# ---------------------------------------------------------------------- checks
def check_adapters(adapters: list[str]) -> list[Path]:
    """The adapter folders as paths; fails when there is none or one holds no adapter.

    Args:
        adapters: ``--adapters`` as given.
    """
    if not adapters:
        raise ConfigError(
            "--adapters: no adapter folder is given. Fix: pass --adapters DIR, or --adapters+ DIR once per adapter."
        )
    return [check_adapter_dir(path, "--adapters") for path in adapters]


def check_numbers(max_new_tokens: int, batch_size: int, temperature: float, top_p: float) -> None:
    """Fail when a numeric option is out of range.

    Args:
        max_new_tokens: ``--max_new_tokens``, at least 1.
        batch_size: ``--batch_size``, at least 1.
        temperature: ``--temperature``, above 0.
        top_p: ``--top_p``, in (0, 1].
    """
    for option, value in (
        ("--max_new_tokens", max_new_tokens),
        ("--batch_size", batch_size),
    ):
        if value < 1:
            raise ConfigError(f"{option}: {value} is below 1. Fix: set it to at least 1.")
    if temperature <= 0:
        raise ConfigError(
            f"--temperature: {temperature} is not above 0. Fix: use e.g. 0.7, or leave --sample off for greedy answers."
        )
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top_p: {top_p} is outside (0, 1]. Fix: use e.g. 0.9, or 1 to keep every token.")


def check_device(device: str | None) -> torch.device:
    """The device to generate on: ``device``, or the GPU when there is one.

    Args:
        device: ``--device`` as given, or None.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device: '{device}' is no device. Fix: use cpu, cuda or cuda:N.") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: '{device}', but this machine has no CUDA device. Fix: use cpu.")
    return target


def check_output(output: str | None) -> Path | None:
    """``--output`` as a path, refused when it is a folder.

    Args:
        output: ``--output`` as given, or None.
    """
    if output is None:
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise ConfigError(f"--output: '{output}' is a folder. Fix: name a file, e.g. {path / 'answers.jsonl'}.")
    return path


def shared_base(adapters: list[Path], base: str | None, gguf_file: str | None, quantized: bool) -> BaseModelSpec:
    """The base to load every adapter onto, stored as ``quantized`` says.

    Without ``--base``, all adapters must record the same base (and, when loading it
    quantized, the same quantization): an adapter only means something on the
    weights it was trained on.

    Args:
        adapters: The adapter folders, already checked.
        base: ``--base``, overriding the adapters' base.
        gguf_file: ``--gguf_file``.
        quantized: ``--quantized``: store the base as during training, else unquantized.

    Raises:
        ConfigError: The adapters record different bases or quantizations, or the
            base cannot be found.
    """
    spec = base_spec(adapters, base, gguf_file)
    if base is None:
        weights = _weights(spec)
        for adapter in adapters[1:]:
            other = BaseModelSpec.of_adapter(adapter)
            if _weights(other) != weights:
                raise ConfigError(
                    f"--adapters: '{adapter}' was trained on {_describe(other)} but "
                    f"'{adapters[0]}' on {_describe(spec)}; adapters compared side by side "
                    "must share their base. Fix: generate for them separately, or pass "
                    "--base to load every adapter onto one base."
                )
    trained = [trained_quantization(adapter) for adapter in adapters]
    if not quantized:
        return dataclasses.replace(
            spec,
            quantization=QuantizationSettings(mode="none", compute_dtype=trained[0].compute_dtype),
        )
    for adapter, settings in zip(adapters[1:], trained[1:], strict=True):
        if settings != trained[0]:
            raise ConfigError(
                f"--adapters: '{adapter}' was trained on a base stored as {settings}, "
                f"'{adapters[0]}' on one stored as {trained[0]}. Fix: pass --quantized "
                "false to compare them on the unquantized base, or generate for them "
                "separately."
            )
    return dataclasses.replace(spec, quantization=trained[0])


def _weights(spec: BaseModelSpec) -> BaseModelSpec:
    """What decides the base's weights, however they are stored."""
    return dataclasses.replace(spec, quantization=QuantizationSettings(mode="none"))


def _describe(spec: BaseModelSpec) -> str:
    fields = [f"'{spec.model_name_or_path}'"]
    if spec.gguf_file is not None:
        fields.append(f"gguf_file '{spec.gguf_file}'")
    if spec.random_init:
        fields.append(f"random weights of seed {spec.seed}")
    if spec.tokenizer_name_or_path is not None:
        fields.append(f"tokenizer '{spec.tokenizer_name_or_path}'")
    return ", ".join(fields)


# ---------------------------------------------------------------------- prompts
def read_prompts(texts: Sequence[str], prompt_file: str | None) -> list[Prompt]:
    """The prompts of ``--prompts`` followed by those of ``--prompt_file``.

    Args:
        texts: ``--prompts``.
        prompt_file: ``--prompt_file``, or None.

    Raises:
        ConfigError: There is no prompt at all, or the file is missing or malformed.
    """
    prompts = [Prompt("prompt_completion", text) for text in texts]
    if prompt_file is not None:
        prompts += read_prompt_file(prompt_file)
    if not prompts:
        raise ConfigError(
            "--prompts: there is no prompt to answer. Fix: pass --prompts+ 'your prompt' "
            "(repeat it for more), or --prompt_file with a .txt (one prompt per line) "
            "or .jsonl file."
        )
    return prompts


def read_prompt_file(prompt_file: str) -> list[Prompt]:
    """The prompts of a ``.txt`` file (one per non-empty line) or ``.jsonl`` file.

    Args:
        prompt_file: ``--prompt_file`` as given.

    Raises:
        ConfigError: The file is missing, of another kind, empty, or a row is malformed.
    """
    path = Path(prompt_file).expanduser()
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise ConfigError(f"--prompt_file: '{prompt_file}' {what}. Fix: point it at a .txt or .jsonl file of prompts.")
    if path.suffix.lower() not in PROMPT_FILE_SUFFIXES:
        raise ConfigError(
            f"--prompt_file: '{prompt_file}' is neither .txt nor .jsonl. Fix: write one "
            "prompt per line into a .txt file, or rows with a 'prompt' or 'messages' "
            "field into a .jsonl file."
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".txt":
        prompts = [Prompt("prompt_completion", line) for line in lines if line.strip()]
    else:
        prompts = [_jsonl_prompt(line, f"--prompt_file '{prompt_file}', line {n}") for n, line in _numbered(lines)]
    if not prompts:
        raise ConfigError(f"--prompt_file: '{prompt_file}' holds no prompt. Fix: add prompts, one per line.")
    return prompts


def _numbered(lines: list[str]) -> Iterator[tuple[int, str]]:
    return ((number, line) for number, line in enumerate(lines, start=1) if line.strip())


def _jsonl_prompt(line: str, where: str) -> Prompt:
    """One JSONL row as a prompt: ``prompt`` (and ``completion``) or ``messages``."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where}: not valid JSON ({error}). Fix: write one JSON object per line.") from None
    if not isinstance(row, dict) or not {"prompt", "messages"} & row.keys():
        raise ConfigError(
            f"{where}: the row has no 'prompt' or 'messages' field. Fix: write rows such as "
            '{"prompt": "..."} or {"messages": [{"role": "user", "content": "..."}]}.'
        )
    try:
        if "messages" in row:
            return _messages_prompt(row["messages"])
        reference = text_field(row, "completion") if row.get("completion") is not None else None
        return Prompt("prompt_completion", text_field(row, "prompt"), reference)
    except ConfigError as error:
        raise ConfigError(f"{where}: {error}") from None


def _messages_prompt(messages: Any) -> Prompt:
    """Turns as a prompt; a final assistant turn is its reference, not part of it."""
    stand_in = {"role": "assistant", "content": _STAND_IN_REPLY}
    turns = check_messages([*messages, stand_in] if isinstance(messages, list) else messages)[:-1]
    reference = None
    if turns and turns[-1]["role"] == "assistant":
        reference = turns.pop()["content"]
    if not turns:
        raise ConfigError(
            "messages has no turn before the reply to generate. Fix: give at least a "
            'user turn, e.g. [{"role": "user", "content": "..."}].'
        )
    return Prompt("messages", turns, reference)


def encode_prompts(
    prompts: Sequence[Prompt], adapter: Path, spec: BaseModelSpec
) -> tuple[list[PromptExample], PreTrainedTokenizerBase]:
    """Render and tokenize prompts with the data module exactly as training prompts were.

    Each prompt becomes a training row with a stand-in reply, and
    :meth:`SFTDataModule.prompt_examples` cuts it where the reply starts: the same
    template (``data.template`` from the adapter's ``training_config.yaml``), the same
    special tokens, the same segment-wise tokenization.

    Args:
        prompts: The prompts, in order.
        adapter: The first adapter folder, whose tokenizer (the one trained with) is used.
        spec: The base, whose tokenizer is used when the adapter folder holds none.

    Returns:
        The prompts' ids, in order, and the tokenizer.
    """
    name_or_path, gguf_file = adapter_tokenizer_source(adapter, spec)
    template = trained_template(adapter)
    examples: list[PromptExample | None] = [None] * len(prompts)
    tokenizer = None
    with (
        tempfile.TemporaryDirectory(prefix="lit_lora_prompts_") as folder,
        _quiet_datasets(),
    ):
        # The data module reads one format per file: one file per format, order kept by index.
        for format in dict.fromkeys(prompt.format for prompt in prompts):
            indices = [index for index, prompt in enumerate(prompts) if prompt.format == format]
            path = Path(folder) / f"{format}.jsonl"
            path.write_text("".join(json.dumps(prompts[index].data_row()) + "\n" for index in indices))
            data = SFTDataModule(
                train_file=str(path),
                predict_file=str(path),
                format=format,
                template=template,
                max_length=sys.maxsize,  # a prompt is never cut
                tokenizer_name_or_path=name_or_path,
                gguf_file=gguf_file,
            )
            for index, example in zip(indices, data.prompt_examples("predict"), strict=True):
                examples[index] = example
            tokenizer = data.tokenizer
    return examples, tokenizer


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Hide the data module's progress bars, which would name temporary files."""
    shown = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if shown:
            datasets.enable_progress_bars()


# ---------------------------------------------------------------------- models
def name_variants(adapters: list[Path], include_base: bool) -> list[Variant]:
    """One variant per adapter, plus the base alone when ``include_base``, with unique labels.

    An adapter's label is its folder's name, with as many parent folders as it takes
    to tell it from the others (``run1/adapter`` and ``run2/adapter``).

    Args:
        adapters: The adapter folders, in order.
        include_base: Add the base model without adapters, labelled ``base``.

    Raises:
        ConfigError: The same folder is given twice.
    """
    paths = [adapter.resolve() for adapter in adapters]
    for index, path in enumerate(paths):
        if path in paths[:index]:
            raise ConfigError(f"--adapters: '{adapters[index]}' is given twice. Fix: give each adapter once.")
    reserved = [BASE_LABEL] if include_base else []
    labels = [_label(path, [p for p in paths if p != path], reserved) for path in paths]
    variants = [Variant(label, f"variant_{index}") for index, label in enumerate(labels)]
    return variants + [Variant(BASE_LABEL, None)] if include_base else variants


def _label(path: Path, others: list[Path], reserved: list[str]) -> str:
    """The shortest tail of ``path`` that no other path ends with and is not reserved.

    The whole path always qualifies, since no folder is given twice.
    """
    return next(
        _tail(path, depth)
        for depth in range(1, len(path.parts) + 1)
        if _tail(path, depth) not in reserved + [_tail(other, depth) for other in others]
    )


def _tail(path: Path, depth: int) -> str:
    """The last ``depth`` parts of ``path``, ``/``-separated."""
    return Path(*path.parts[-depth:]).as_posix()


def load_variants(
    spec: BaseModelSpec,
    adapters: list[Path],
    variants: list[Variant],
    device: torch.device,
) -> PeftModel:
    """Load the base once and every adapter onto it under its variant's adapter name.

    Args:
        spec: The base and how to store it.
        adapters: The adapter folders, in the order of ``variants``.
        variants: The adapters' variants (a trailing base variant is ignored).
        device: Where the model runs.
    """
    model = load_base_model(spec.folder(), spec.quantization, device)
    names = [variant.adapter_name for variant in variants[: len(adapters)]]
    model = PeftModel.from_pretrained(model, adapters[0], adapter_name=names[0])
    for adapter, name in zip(adapters[1:], names[1:], strict=True):
        model.load_adapter(adapter, adapter_name=name)
    return model


def answer_with(
    model: PeftModel,
    variant: Variant,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[PromptExample],
    batch_size: int,
    max_new_tokens: int,
    sampling: Sampling | None,
    stop_token_ids: Sequence[int],
) -> list[str]:
    """Answer every prompt with one variant: its adapter active, or all adapters off.

    Args:
        model: The base with every adapter loaded.
        variant: Which adapter answers, or none.
        tokenizer: The tokenizer trained with.
        examples: The tokenized prompts.
        batch_size: Prompts generated at once.
        max_new_tokens: Most tokens per answer.
        sampling: Sampling settings, or None for greedy answers.
        stop_token_ids: Tokens that end an answer.
    """
    arguments = (
        model,
        tokenizer,
        examples,
        batch_size,
        max_new_tokens,
        sampling,
        stop_token_ids,
    )
    if variant.adapter_name is None:
        with model.disable_adapter():
            return answer_prompts(*arguments)
    model.set_adapter(variant.adapter_name)
    return answer_prompts(*arguments)


# ---------------------------------------------------------------------- output
def format_comparison(prompts: Sequence[Prompt], records: Sequence[dict[str, Any]]) -> str:
    """Each prompt, then one labelled answer per variant and the reference when known.

    Args:
        prompts: The prompts, in order.
        records: Their records, with ``answers`` (label -> answer) and maybe ``reference``.
    """
    blocks = []
    for number, (prompt, record) in enumerate(zip(prompts, records, strict=True), start=1):
        lines = [f"=== prompt {number} of {len(prompts)} ===", prompt.display()]
        for label, answer in record["answers"].items():
            lines += [f"--- {label} ---", answer]
        if "reference" in record:
            lines += ["--- reference ---", record["reference"]]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
