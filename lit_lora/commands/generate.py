"""``python -m lit_lora generate``: answer prompts with one or more adapters, side by side.

Owns the command's options and their checks, naming the variants, and printing and
writing the answers. Prompts are read, rendered and tokenized by
:mod:`lit_lora.commands.prompts`, as training prompts were; the base with every
adapter is loaded by :mod:`lit_lora.model.pretrained`; generation itself is
:mod:`lit_lora.model.generation`'s."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from lit_lora.artifacts.adapter_dir import check_adapter_dir, trained_template
from lit_lora.commands.prompts import Prompt, encode_prompts, read_prompts
from lit_lora.data.collate import PromptExample
from lit_lora.errors import ConfigError
from lit_lora.model.generation import Sampling, answer_prompts, end_token_ids
from lit_lora.model.pretrained import resolve_trained_model, shared_option_docs

# Label of the base model without adapters, with --include_base.
BASE_LABEL = "base"


@dataclass(frozen=True)
class Variant:
    """A model answers come from: the base with one adapter active, or the base alone.

    Args:
        label: Its name in the printed comparison and the ``--output`` records.
        adapter_name: The PEFT adapter name it activates; None for the base alone.
    """

    label: str
    adapter_name: str | None


@shared_option_docs
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
        quantized: {quantized}
        base: {base}
        gguf_file: {gguf_file}
        device: {device}

    Returns:
        The records written to ``--output``, one per prompt.
    """
    adapter_dirs = check_adapters(_as_list(adapters))
    check_numbers(max_new_tokens, batch_size, temperature, top_p)
    output_path = check_output(output)
    requests = read_prompts(prompts or [], prompt_file)
    trained = resolve_trained_model(adapter_dirs, base, gguf_file, quantized, device)
    variants = name_variants(adapter_dirs, include_base)
    examples, tokenizer = encode_prompts(requests, trained_template(adapter_dirs[0]), trained.tokenizer_source())

    model = trained.load([variant.adapter_name for variant in variants[: len(adapter_dirs)]])
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
