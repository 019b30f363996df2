"""Rendering an example as text segments, each marked as trained (a response) or not.

Chat mode (the tokenizer has a chat template) renders the conversation with the
template. For each assistant turn ``i``, ``messages[:i]`` rendered with the
generation prompt is the untrained prefix, and ``messages[:i + 1]`` rendered ends the
trained span: the assistant's content plus whatever end-of-turn text the template
writes after it (``<|im_end|>`` and a newline for ChatML), so the model learns to
stop. Every assistant turn is trained, nothing else.

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

``messages``, turn by turn: a system turn is ``{content}`` and a blank line; a user
turn and the header of the reply are untrained, the reply and its EOS trained, and
the blank line after it (``\\n\\n``) untrained again::

    ### User:
    {content}

    ### Assistant:
    ||{content}EOS||


Field text is never stripped or altered. A conversation must end with an assistant
turn (``lit_lora.data.formats`` refuses one that does not): turns after it would
never be trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from lightning.pytorch.utilities import rank_zero_info
from transformers import PreTrainedTokenizerBase

from lit_lora.data.formats import Conversation
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
    """

    text: str
    trained: bool


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


def render_chat(conversation: Conversation, tokenizer: PreTrainedTokenizerBase) -> list[Segment]:
    """Render a conversation with the tokenizer's chat template, training every assistant turn.

    Args:
        conversation: Role/content turns with at least one assistant turn.
        tokenizer: A tokenizer with a chat template.

    Raises:
        ConfigError: An assistant turn comes first (a template cannot render a prompt of
            nothing), or the template rewrites earlier turns once later ones follow, so
            renders are not prefixes of each other.
    """
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
        prompt = _apply(tokenizer, conversation[:turn], add_generation_prompt=True)
        full = _apply(tokenizer, conversation[: turn + 1], add_generation_prompt=False)
        for shorter, longer in ((covered, prompt), (prompt, full)):
            if not longer.startswith(shorter):
                raise ConfigError(
                    f"the chat template of tokenizer '{tokenizer.name_or_path}' renders turn {turn} so that "
                    f"the text before it changes ({shorter!r} is not a prefix of {longer!r}), so the "
                    "response tokens cannot be told apart. Fix: set data.template: plain."
                )
        segments += [Segment(prompt[len(covered) :], False), Segment(full[len(prompt) :], True)]
        covered = full
    return segments


def _apply(tokenizer: PreTrainedTokenizerBase, conversation: Conversation, add_generation_prompt: bool) -> str:
    # tokenize=False makes transformers return the rendered string, never a BatchEncoding.
    return tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)


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


def render_plain_messages(conversation: Conversation, eos_token: str) -> list[Segment]:
    """Render a conversation with ``###`` headers, training every assistant turn and its EOS.

    Args:
        conversation: Role/content turns.
        eos_token: The tokenizer's end-of-sequence token, closing each assistant turn.
    """
    last = max(turn for turn, message in enumerate(conversation) if message["role"] == "assistant")
    segments = []
    for message in conversation[: last + 1]:
        content = message["content"]
        if message["role"] == "system":
            segments.append(Segment(f"{content}\n\n", False))
        elif message["role"] == "user":
            segments.append(Segment(f"### User:\n{content}\n\n### Assistant:\n", False))
        else:
            segments += [Segment(content + eos_token, True), Segment("\n\n", False)]
    return segments
