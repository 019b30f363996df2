"""The prompts ``generate`` answers: read from the command line and files, rendered as training renders them.

A prompt is given as text (``--prompts``, a ``.txt`` line, a ``prompt`` field) or as
role/content turns (a ``messages`` field); :func:`encode_prompts` renders and tokenizes
it with :class:`~lit_lora.data.SFTDataModule` itself, so it reaches the model exactly
as training prompts did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from lit_lora.data import SFTDataModule
from lit_lora.data.collate import PromptExample
from lit_lora.data.formats import FORMAT_COLUMNS, Conversation, check_messages, text_field
from lit_lora.errors import ConfigError

PromptFormat = Literal["prompt_completion", "messages"]

# check_messages checks whole training rows, which end with the assistant's reply: a
# stand-in reply lets it check the turns a prompt ends with.
_STAND_IN_REPLY = "?"

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

    def display(self) -> str:
        """The prompt as printed: its text, or one ``role: content`` line per turn."""
        if self.format == "messages":
            return "\n".join(f"{turn['role']}: {turn['content']}" for turn in self.value)
        return self.value


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
    prompts: Sequence[Prompt], template: str, tokenizer_source: tuple[str, str | None]
) -> tuple[list[PromptExample], PreTrainedTokenizerBase]:
    """Render and tokenize prompts with the data module exactly as training prompts were.

    :meth:`SFTDataModule.encode_prompt` gives each prompt's ids: the same template,
    the same special tokens, the same segment-wise tokenization, never truncated.

    Args:
        prompts: The prompts, in order.
        template: The ``data.template`` the adapter trained with.
        tokenizer_source: The tokenizer trained with, as ``(name_or_path, gguf_file)``.

    Returns:
        The prompts' ids, in order (with their references, empty when none), and the tokenizer.
    """
    name_or_path, gguf_file = tokenizer_source
    data = SFTDataModule(template=template, tokenizer_name_or_path=name_or_path, gguf_file=gguf_file)
    examples = [
        PromptExample(data.encode_prompt(prompt.fields(), prompt.format), prompt.reference or "") for prompt in prompts
    ]
    return examples, data.tokenizer
