"""Parsing a config through lit_lora's real CLI parser without building or running anything."""

from __future__ import annotations

from jsonargparse import Namespace

from lit_lora.cli import LitLoraCLI, build_cli


class ParseOnlyCLI(LitLoraCLI):
    """Parses and validates a config without building anything (no model, no files).

    The run-time checks (e.g. a checkpoint folder an earlier run filled) are skipped
    too: what is parsed is the config, not the state of the disk.
    """

    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass

    def after_instantiate_classes(self) -> None:
        pass

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse(args: list[str]) -> Namespace:
    """The parsed configuration of a command line, e.g. ``["fit", "--config", path]``."""
    return build_cli(args, cli_class=ParseOnlyCLI).config
