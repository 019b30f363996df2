"""``python -m lit_lora preview``: see what a ``fit`` config trains, without loading the model.

Takes the same command line as ``fit`` (``--config``, ``--data.*`` overrides), builds
exactly the data module ``fit`` would, and prints a few of its examples with the
trained tokens highlighted, then the statistics ``fit`` logs when it starts. Only
the tokenizer is loaded, never the model's weights.

Trained text is shown in green in a terminal, and between the markers ``[[`` and
``]]`` otherwise (``--color never``). Special tokens are shown as written
(``<|im_start|>``, the EOS).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import groupby
from typing import Any, Literal

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import ArgsType, LightningArgumentParser
from transformers import PreTrainedTokenizerBase

from lit_lora.artifacts.source import check_base_settings
from lit_lora.cli import LitLoraCLI, build_cli
from lit_lora.data import SFTDataModule
from lit_lora.data.encode import IGNORE_INDEX
from lit_lora.data.stats import format_stats
from lit_lora.errors import ConfigError

PreviewSplit = Literal["train", "validation", "test"]

TRAINED_MARKERS = ("[[", "]]")
TRAINED_COLOR = ("\x1b[32m", "\x1b[0m")  # ANSI green, then reset

# The splits whose statistics are printed, in order: what ``fit`` reads, then ``test``.
STATS_SPLITS: tuple[PreviewSplit, ...] = ("train", "validation", "test")


def highlight(tokenizer: PreTrainedTokenizerBase, input_ids: Sequence[int], labels: Sequence[int], color: bool) -> str:
    """Decode an example with its trained tokens (a label other than -100) marked.

    Each run of trained or untrained tokens is the text that decoding the whole
    example adds over decoding it up to the run, so a token that decodes differently
    at the start of a text (a leading space) reads as it does in context.

    Args:
        tokenizer: The tokenizer the example was encoded with.
        input_ids: The example's token ids.
        labels: Its labels, aligned with ``input_ids``.
        color: Wrap trained text in ANSI green instead of ``[[`` and ``]]``.
    """
    opening, closing = TRAINED_COLOR if color else TRAINED_MARKERS
    pieces, start, decoded = [], 0, ""
    for trained, run in groupby(label != IGNORE_INDEX for label in labels):
        end = start + len(list(run))
        text = tokenizer.decode(input_ids[:end], skip_special_tokens=False)
        # A character split across two runs (byte-level tokens) makes the earlier text
        # no prefix of the later; the run decoded on its own is then the best there is.
        if text.startswith(decoded):
            piece = text[len(decoded) :]
        else:
            piece = tokenizer.decode(input_ids[start:end], skip_special_tokens=False)
        pieces.append(f"{opening}{piece}{closing}" if trained else piece)
        start, decoded = end, text
    return "".join(pieces)


def preview(
    datamodule: SFTDataModule,
    split: PreviewSplit = "train",
    num_examples: int = 3,
    color: Literal["auto", "always", "never"] = "auto",
) -> str:
    """Render the first examples of a split with trained text highlighted, then the statistics.

    Args:
        datamodule: The data module, as ``fit`` builds it.
        split: Which split's examples to show: ``train``, ``validation`` or ``test``.
        num_examples: How many examples to show, from the start of the split.
        color: Highlight trained text in green (``always``), with ``[[`` and ``]]``
            (``never``), or in green only when printing to a terminal (``auto``).

    Returns:
        The text printed.

    Raises:
        ConfigError: The split has no data, or ``num_examples`` is negative.
    """
    if num_examples < 0:
        raise ConfigError(f"num_examples: {num_examples} is below 0. Fix: set it to 0 or more.")
    examples = datamodule.dataset(split)
    if examples is None:
        raise ConfigError(
            f"split: the {split} split has no data. Fix: set data.val_file or data.val_fraction, or preview "
            "another split."
        )
    use_color = color == "always" or (color == "auto" and sys.stdout.isatty())
    legend = "in green" if use_color else f"between {TRAINED_MARKERS[0]} and {TRAINED_MARKERS[1]}"
    blocks = []
    for index, example in enumerate(examples.select(range(min(num_examples, len(examples))))):
        trained = sum(label != IGNORE_INDEX for label in example["labels"])
        header = (
            f"=== {split} example {index + 1} of {len(examples)}: {len(example['input_ids'])} tokens, "
            f"{trained} trained ({legend}) ==="
        )
        blocks.append(
            f"{header}\n{highlight(datamodule.tokenizer, example['input_ids'], example['labels'], use_color)}"
        )
    # Reading a split fills in its statistics. A split without data of its own (test
    # without data.test_file reads the validation data) has none, and is left out.
    for other in STATS_SPLITS:
        datamodule.dataset(other)
    stats = {name: datamodule.stats[name] for name in STATS_SPLITS if name in datamodule.stats}
    blocks.append(f"=== Data statistics ===\n{format_stats(stats)}")
    text = "\n\n".join(blocks)
    print(text)
    return text


class PreviewCLI(LitLoraCLI):
    """``fit``'s command line plus ``preview``'s options; instantiates the data module alone.

    Parsing with the same parser as ``fit`` applies the same defaults, overrides and
    links (the data module's tokenizer comes from the model settings), so the data
    module is exactly the one ``fit`` would build. Neither the model nor the trainer
    is built.
    """

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        description = "Print examples of a fit config's data with the trained text highlighted, and its statistics."
        return super().init_parser(prog="python -m lit_lora preview", description=description, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        super().add_arguments_to_parser(parser)
        parser.add_function_arguments(preview, nested_key=None, skip={"datamodule"})

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # LightningCLI warns when given arguments while the program has its own; here
        # they are the program's, less the leading ``preview``.
        self.config = parser.parse_args(args)

    def before_instantiate_classes(self) -> None:
        # The guard against overwriting checkpoints is fit's: preview writes nothing.
        pass

    def instantiate_classes(self) -> None:
        # The model's source, checked as fit and estimate check it: the tokenizer comes from there.
        model = self.config.model.init_args
        check_base_settings(model.model_name_or_path, model.gguf_file, model.tokenizer_name_or_path, model.random_init)
        # A parser for the data module alone instantiates ``data`` exactly as the full
        # one would (any subclass, nested classes), without touching ``model``.
        parser = ArgumentParser()
        parser.add_subclass_arguments(SFTDataModule, "data", required=True)
        self.datamodule = parser.instantiate_classes(parser.parse_object({"data": self.config.data})).data

    def after_instantiate_classes(self) -> None:
        pass


def main(args: Sequence[str]) -> str:
    """Parse ``fit``'s command line plus ``--split``, ``--num_examples`` and ``--color``, and preview.

    Args:
        args: The command line after ``preview``.
    """
    cli = build_cli(list(args), run=False, cli_class=PreviewCLI)
    options = {name: cli.config[name] for name in ("split", "num_examples", "color")}
    return preview(cli.datamodule, **options)
