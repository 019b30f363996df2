"""Data rendered as conversations: a prompt and its responses, tokenized with only the responses trained.

The rendering and encoding half of :class:`~lit_lora.data.SFTDataModule`, apart from
its file reading, splits and batching, so that a data module of another layout
(:class:`~lit_lora.data.PreferenceDataModule`'s pairs) reuses it hook by hook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import Any, ClassVar, Literal

from lit_lora.data.base import TaskDataModule
from lit_lora.data.collate import PromptExample
from lit_lora.data.diagnose import row_location
from lit_lora.data.encode import Example, encode_segments, sequence_prefix
from lit_lora.data.formats import (
    FORMAT_COLUMNS,
    Conversation,
    alpaca_input,
    check_format_name,
    response_field,
    text_field,
    to_conversation,
)
from lit_lora.data.literal_text import render_literal, special_token_texts
from lit_lora.data.render import (
    Segment,
    check_template_name,
    render_chat,
    render_plain_alpaca,
    render_plain_messages,
    render_plain_prompt_completion,
    render_text,
    resolve_template,
)
from lit_lora.data.tools import row_tools
from lit_lora.errors import ConfigError


class ConversationDataModule(TaskDataModule):
    """Renders rows as conversations and tokenizes them, the prompt masked.

    Subclasses call :meth:`set_rendering` in their constructor and set ``max_length``
    (the settings :class:`~lit_lora.data.SFTDataModule` documents); the hooks below
    are what a new format or layout overrides.
    """

    format_columns: ClassVar[Mapping[str, Sequence[str]]] = FORMAT_COLUMNS
    # What a tokenized example keeps for batching (a subclass adds its own columns).
    example_columns: ClassVar[tuple[str, ...]] = ("input_ids", "labels")
    encoding_settings: ClassVar[tuple[str, ...]] = (
        *TaskDataModule.encoding_settings,
        "format",
        "template",
        "train_on_prompt",
        "system_prompt",
        "allow_special_tokens_in_text",
    )
    # Decided with the tokenizer: chat or plain rendering, the BOS it puts first (which
    # plain mode and text documents use), and the texts of its special tokens.
    encoding_state: ClassVar[tuple[str, ...]] = ("_mode", "_prefix", "_special_texts")
    _mode: Literal["chat", "plain"] | None = None
    _prefix: tuple[int, ...] = ()
    _special_texts: tuple[str, ...] = ()

    def set_rendering(
        self,
        format: str,
        template: str,
        train_on_prompt: bool,
        system_prompt: str | None,
        allow_special_tokens_in_text: bool,
    ) -> None:
        """Check and keep the rendering settings.

        Args:
            format: A format name of ``format_columns``, or ``auto``.
            template: ``auto``, ``chat`` or ``plain``.
            train_on_prompt: Also train on prompt tokens.
            system_prompt: A system turn put first where a conversation has none, or ``None``.
            allow_special_tokens_in_text: Let data text that spells a special token become it.

        Raises:
            ConfigError: The format or template is unknown.
        """
        check_format_name(format, self.format_columns)
        check_template_name(template)
        self.format = format
        self.template = template
        self.train_on_prompt = train_on_prompt
        self.system_prompt = system_prompt
        self.allow_special_tokens_in_text = allow_special_tokens_in_text

    def to_conversation(self, row: Mapping[str, Any], format: str) -> Conversation:
        """Turn one row of the data into role/content turns.

        Args:
            row: One example as read from the file.
            format: The format of the file the row comes from.

        Raises:
            ConfigError: The row does not fit the format.
        """
        return to_conversation(row, format)

    def conversation(self, row: Mapping[str, Any], format: str) -> Conversation:
        """:meth:`to_conversation`, with ``system_prompt`` put first when the conversation has no system turn.

        Args:
            row: One example as read from the file.
            format: The format of the file the row comes from.
        """
        conversation = self.to_conversation(row, format)
        if self.system_prompt is None or conversation[0]["role"] == "system":
            return conversation
        return [{"role": "system", "content": self.system_prompt}, *conversation]

    def render(self, row: Mapping[str, Any], format: str) -> list[Segment]:
        """Render one row as text segments, trained where the model should produce them.

        Chat mode renders :meth:`conversation` with the chat template and the row's
        ``tools``; plain mode uses the plain template of the row's format (after
        ``system_prompt`` and a blank line), or the plain ``messages`` layout for
        conversations and any other format. A ``text`` document is rendered alone, in
        either mode.

        Args:
            row: One example as read from the file.
            format: The format of the file the row comes from.

        Raises:
            ConfigError: The row does not fit the format, or the template cannot render it.
        """
        eos = self.tokenizer.eos_token
        if format == "text":
            return render_text(text_field(row, "text"), eos)
        if self._mode == "chat":
            return render_chat(self.conversation(row, format), self.tokenizer, row_tools(row))
        system = [Segment(f"{self.system_prompt}\n\n", False)] if self.system_prompt is not None else []
        if format == "prompt_completion" and isinstance(row["prompt"], str) and isinstance(row["completion"], str):
            return system + render_plain_prompt_completion(row["prompt"], response_field(row, "completion"), eos)
        if format == "alpaca":
            return system + render_plain_alpaca(
                text_field(row, "instruction"), alpaca_input(row), response_field(row, "output"), eos
            )
        return render_plain_messages(self.conversation(row, format), eos, row_tools(row))

    def render_as_written(self, row: Mapping[str, Any], format: str) -> list[Segment]:
        """:meth:`render`, with text in the row that spells a special token marked to stay plain text.

        Unless ``allow_special_tokens_in_text``; see ``lit_lora.data.literal_text``.

        Args:
            row: One example as read from the file.
            format: The format of the file the row comes from.

        Raises:
            ConfigError: As :meth:`render`, or the template changes such text.
        """
        if self.allow_special_tokens_in_text:
            return self.render(row, format)
        return render_literal(partial(self.render, format=format), row, self._special_texts)

    def encode(self, segments: list[Segment], format: str, max_length: int | None = None) -> Example:
        """Tokenize segments into ``input_ids``, ``labels`` and ``num_supervised``.

        Args:
            segments: Rendered text pieces, in order.
            format: The format they were rendered from: a ``text`` document starts with
                the tokenizer's own BOS even in chat mode, where no template writes one.
            max_length: Keep only the first ``max_length`` tokens; ``None`` keeps all
                (prompts for generation are never cut).
        """
        # A chat template writes BOS itself when the model wants one; the tokenizer's
        # own on top would double it.
        prefix = self._prefix if self._mode == "plain" or format == "text" else []
        return encode_segments(self.tokenizer, segments, list(prefix), max_length)

    def encode_prompt(self, row: Mapping[str, Any], format: str) -> list[int]:
        """The prompt token ids of one row that has no final response, as generation feeds them to the model.

        Rendered and tokenized exactly as training renders the prompt part of the same
        row with a response (the chat template up to and including the assistant header,
        or the plain template of the format), and never truncated: the same ids
        :meth:`prompt_examples` gives. Loads the tokenizer when it is not loaded yet.

        Args:
            row: ``{"prompt": ...}`` for ``prompt_completion``; ``{"instruction": ...,
                "input": ...}`` (input optional) for ``alpaca``; ``{"messages": [...]}``
                ending with a user turn for ``messages``.
            format: ``prompt_completion``, ``alpaca`` or ``messages``.

        Raises:
            ConfigError: The format is none of those, or the row does not fit it.
        """
        self.load_tokenizer()
        # The prompt part of a rendering never depends on the response after it, so any
        # stand-in reply gives the prompt's segments as training cuts them.
        if format == "prompt_completion":
            row = {**row, "completion": "?"}
        elif format == "alpaca":
            row = {**row, "output": "?"}
        elif format == "messages":
            row = {**row, "messages": [*row["messages"], {"role": "assistant", "content": "?"}]}
        else:
            raise ConfigError(
                f"format '{format}': prompts are read as prompt_completion, alpaca or messages. Fix: use one of those."
            )
        return self.prompt_ids(self.render_as_written(row, format), format)

    def prompt_ids(self, segments: list[Segment], format: str) -> list[int]:
        """The ids of the segments before the last trained one: the prompt of its last response."""
        last = max(index for index, segment in enumerate(segments) if segment.trained)
        return self.encode(segments[:last], format)["input_ids"]

    def prompt_example(self, row: Mapping[str, Any], format: str) -> PromptExample:
        """The prompt ids of a row and the text of its last assistant turn, the reference of generation."""
        reference = next(
            turn["content"] for turn in reversed(self.to_conversation(row, format)) if turn["role"] == "assistant"
        )
        return PromptExample(self.prompt_ids(self.render_as_written(row, format), format), reference)

    def load_tokenizer(self) -> None:
        """Load the tokenizer (once) and decide between chat and plain rendering.

        Raises:
            ConfigError: The tokenizer has no EOS token.
        """
        if self.tokenizer is not None:
            return
        super().load_tokenizer()
        self._mode = resolve_template(self.template, self.tokenizer)
        if self.tokenizer.eos_token is None:
            raise ConfigError(
                f"tokenizer '{self.tokenizer_name_or_path}' has no EOS token, which ends every response and pads "
                "batches. Fix: use a tokenizer that defines eos_token."
            )
        self._prefix = tuple(sequence_prefix(self.tokenizer))
        self._special_texts = special_token_texts(self.tokenizer)

    def encode_row(self, row: dict[str, Any], index: int, format: str, source: str, path: str) -> Example:
        """Render and tokenize one row of a data file, as ``Dataset.map`` calls it.

        Override to add columns to each example (list them in ``example_columns``, and
        batch them in :meth:`collator`). The tokenized examples are cached by
        ``datasets``, keyed by this module's rendering settings and code.

        Args:
            row: One row as read from the file.
            index: Its 0-based position in the file, for error messages.
            format: The format of the file.
            source: The setting and file, named in errors (``data.train_file 'x.jsonl'``).
            path: The file or hub id the row comes from.

        Raises:
            ConfigError: The row does not fit the format, naming its file and line.
        """
        try:
            segments = self.render_as_written(row, format)
        except ConfigError as error:
            # Only a failing row pays for finding its line in the file.
            raise ConfigError(f"{source}, {row_location(path, index)}: {error}") from error
        if self.train_on_prompt:
            segments = [replace(segment, trained=True) for segment in segments]
        return self.encode(segments, format, self.max_length)
