"""Parsing a config through lit_lora's real CLI parser without building or running anything."""

from __future__ import annotations

from jsonargparse import Namespace

from lit_lora.cli import ConfigOnlyCLI, build_cli


class ParseOnlyCLI(ConfigOnlyCLI):
    """:class:`ConfigOnlyCLI` with subcommands: the config of ``fit``, ``validate``... is parsed, nothing runs."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse(args: list[str]) -> Namespace:
    """The parsed configuration of a command line, e.g. ``["fit", "--config", path]``."""
    return build_cli(args, cli_class=ParseOnlyCLI).config
