"""Rendering an example as text segments, each marked as trained (a response) or not.

Chat mode (the tokenizer has a chat template) renders the conversation with the
template. For each assistant turn ``i``, ``messages[:i]`` rendered with the
generation prompt is the untrained prefix, and ``messages[:i + 1]`` rendered ends the
trained span: the assistant's content (and tool calls) plus whatever end-of-turn text
the template writes after it (``<|im_end|>`` and a newline for ChatML), so the model
learns to stop. Every assistant turn is trained (but one marked ``train: false``),
nothing else: tool results are context. A row's ``tools`` are handed to the template
(``apply_chat_template(..., tools=...)``).

Plain mode (no chat template, or ``data.template: plain``; with ``auto`` a tokenizer
without a chat template falls back to it and the log says so) renders as below, where
``EOS`` is the tokenizer's end-of-sequence token, ``{field}`` the field's text, and
every line break is a ``\\n``. Text is untrained up to a ``||``, which switches
between untrained and trained.

``prompt_completion``, a raw concatenation with no separator, so the data decides
the spacing::

    {prompt}||{completion}EOS

``alpaca`` when ``input`` is missing or empty::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Response:
    ||{output}EOS

``alpaca`` when ``input`` is non-empty::

    Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.

    ### Instruction:
    {instruction}

    ### Input:
    {input}

    ### Response:
    ||{output}EOS

``messages`` (and ``sharegpt``, and ``prompt_completion`` holding turns), turn by
turn: a system turn is ``{content}`` and a blank line; a user turn and the header of
the reply are untrained, the reply and its EOS trained (untrained for a turn marked
``train: false``), and the blank line after it (``\\n\\n``) untrained again::

    ### User:
    {content}

    ### Assistant:
    ||{content}EOS||

A tool result is untrained like a user turn, under ``### Tool:``. An assistant turn's
tool calls follow its content, each as the JSON of its ``{"name": ..., "arguments":
...}`` on a line of its own. A row's ``tools`` come first, untrained: ``### Tools:``
and each definition's JSON on a line of its own, then a blank line.

``text``, in either mode, a document trained whole, after the BOS the tokenizer adds
(if any, once; no chat template is applied)::

    ||{text}EOS


Field text is never stripped or altered. A conversation must end with an assistant
turn (``lit_lora.data.formats`` refuses one that does not): turns after it would
never be trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import TemplateError
from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedTokenizerBase

from lit_lora.data.formats import Conversation
from lit_lora.data.tools import plain_json, plain_reply
from lit_lora.errors import ConfigError

TEMPLATES = ("auto", "chat", "plain")

ALPACA_PROMPT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
    "{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text and whether the model is trained to produce it.

    Args:
        text: The text, tokenized on its own.
        trained: Whether its tokens get labels (``True``) or -100 (``False``).
        literal: Character spans of ``text`` that are data spelling a special token,
            tokenized as plain text (see ``lit_lora.data.literal_text``).
    """

    text: str
    trained: bool
    literal: tuple[tuple[int, int], ...] = ()


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer carries a chat template.

    Args:
        tokenizer: The tokenizer to inspect.
    """
    return bool(tokenizer.chat_template)


def check_template_name(template: str) -> None:
    """Reject a ``data.template`` value other than ``auto``, ``chat`` or ``plain``.

    Args:
        template: The setting as the user wrote it.

    Raises:
        ConfigError: The value is unknown.
    """
    if template not in TEMPLATES:
        raise ConfigError(f"data.template: unknown value '{template}'. Fix: use one of {', '.join(TEMPLATES)}.")


def resolve_template(template: str, tokenizer: PreTrainedTokenizerBase) -> Literal["chat", "plain"]:
    """Decide between chat and plain rendering.

    Args:
        template: ``"auto"`` (chat when the tokenizer has a chat template, else plain,
            logged), ``"chat"`` or ``"plain"``.
        tokenizer: The tokenizer examples are rendered for.

    Raises:
        ConfigError: ``template`` is unknown, or ``"chat"`` with a tokenizer that has no template.
    """
    check_template_name(template)
    if template == "chat" and not has_chat_template(tokenizer):
        raise ConfigError(
            f"data.template: 'chat', but tokenizer '{tokenizer.name_or_path}' has no chat template. "
            "Fix: set data.template to 'plain' (or 'auto'), or use a chat model's tokenizer."
        )
    if template != "auto":
        return template
    if has_chat_template(tokenizer):
        return "chat"
    rank_zero_info(
        f"lit_lora: tokenizer '{tokenizer.name_or_path}' has no chat template, so examples are rendered with "
        "the plain template (### User: / ### Assistant:, see lit_lora.data.render). Set data.template: plain "
        "to choose it explicitly."
    )
    return "plain"


def render_chat(
    conversation: Conversation, tokenizer: PreTrainedTokenizerBase, tools: list[dict[str, Any]] | None = None
) -> list[Segment]:
    """Render a conversation with the tokenizer's chat template, training every assistant turn.

    Args:
        conversation: Role/content turns with at least one assistant turn; an assistant
            turn with ``"train": False`` is rendered untrained.
        tokenizer: A tokenizer with a chat template.
        tools: Tool definitions handed to the template, or ``None``.

    Raises:
        ConfigError: An assistant turn comes first (a template cannot render a prompt of
            nothing), the template raises, or it rewrites earlier turns once later ones
            follow, so renders are not prefixes of each other.
    """
    # The train flag is lit_lora's, not a key the template should see.
    messages = [{key: value for key, value in message.items() if key != "train"} for message in conversation]
    segments = []
    covered = ""  # the text the segments so far spell out
    for turn, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        if turn == 0:
            raise ConfigError(
                "messages starts with an assistant turn, which a chat template gives no prompt to. "
                "Fix: add a user (or system) turn before it, or set data.template: plain."
            )
        prompt = _apply(tokenizer, messages[:turn], tools, add_generation_prompt=True)
        full = _apply(tokenizer, messages[: turn + 1], tools, add_generation_prompt=False)
        for shorter, longer in ((covered, prompt), (prompt, full)):
            if not longer.startswith(shorter):
                raise ConfigError(
                    f"the chat template of tokenizer '{tokenizer.name_or_path}' renders turn {turn} so that "
                    f"the text before it changes ({shorter!r} is not a prefix of {longer!r}), so the "
                    "response tokens cannot be told apart. Fix: set data.template: plain."
                )
        trained = message.get("train", True)
        segments += [Segment(prompt[len(covered) :], False), Segment(full[len(prompt) :], trained)]
        covered = full
    return segments


def _apply(
    tokenizer: PreTrainedTokenizerBase,
    conversation: Conversation,
    tools: list[dict[str, Any]] | None,
    add_generation_prompt: bool,
) -> str:
    try:
        # tokenize=False makes transformers return the rendered string, never a BatchEncoding.
        return tokenizer.apply_chat_template(
            conversation, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False
        )
    except (TemplateError, TypeError, ValueError, KeyError) as error:
        # Templates refuse what they cannot render with raise_exception (a TemplateError),
        # or fail on a value they do not expect; the row is the user's to fix.
        raise ConfigError(
            f"the chat template of tokenizer '{tokenizer.name_or_path}' refused this example: "
            f"{type(error).__name__}: {error}. Fix: change the example to what the template accepts "
            "(its roles, turn order, fields), or set data.template: plain."
        ) from None


def render_text(text: str, eos_token: str) -> list[Segment]:
    """Render a ``text`` document: all of it and EOS trained, no template.

    Args:
        text: The document, as written.
        eos_token: The tokenizer's end-of-sequence token, ending the document.
    """
    return [Segment(text + eos_token, True)]


def render_plain_prompt_completion(prompt: str, completion: str, eos_token: str) -> list[Segment]:
    """Render ``prompt`` untrained followed by ``completion`` and EOS trained, with no separator.

    Args:
        prompt: The prompt text, as written.
        completion: The response text, as written.
        eos_token: The tokenizer's end-of-sequence token, so the model learns to stop.
    """
    return [Segment(prompt, False), Segment(completion + eos_token, True)]


def render_plain_alpaca(instruction: str, input: str, output: str, eos_token: str) -> list[Segment]:
    """Render the standard Alpaca prompt untrained followed by ``output`` and EOS trained.

    Args:
        instruction: The task.
        input: Context for the task; ``""`` selects the prompt without an input section.
        output: The response text, as written.
        eos_token: The tokenizer's end-of-sequence token.
    """
    if input:
        prompt = ALPACA_PROMPT_WITH_INPUT.format(instruction=instruction, input=input)
    else:
        prompt = ALPACA_PROMPT.format(instruction=instruction)
    return [Segment(prompt, False), Segment(output + eos_token, True)]


def render_plain_messages(
    conversation: Conversation, eos_token: str, tools: list[dict[str, Any]] | None = None
) -> list[Segment]:
    """Render a conversation with ``###`` headers, training every assistant turn and its EOS.

    Args:
        conversation: Role/content turns; an assistant turn with ``"train": False`` is
            rendered untrained.
        eos_token: The tokenizer's end-of-sequence token, closing each assistant turn.
        tools: Tool definitions, written first, or ``None``.
    """
    last = max(turn for turn, message in enumerate(conversation) if message["role"] == "assistant")
    definitions = "".join(f"{plain_json(tool)}\n" for tool in tools or [])
    segments = [Segment(f"### Tools:\n{definitions}\n", False)] if tools else []
    for message in conversation[: last + 1]:
        content = message["content"]
        if message["role"] == "system":
            segments.append(Segment(f"{content}\n\n", False))
        elif message["role"] == "user":
            segments.append(Segment(f"### User:\n{content}\n\n### Assistant:\n", False))
        elif message["role"] == "tool":
            segments.append(Segment(f"### Tool:\n{content}\n\n### Assistant:\n", False))
        else:
            reply = plain_reply(content, message.get("tool_calls", []))
            segments += [Segment(reply + eos_token, message.get("train", True)), Segment("\n\n", False)]
    return segments
