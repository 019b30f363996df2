"""Parsing a config through lit_lora's real CLI parser, and building its objects, without running anything."""

from __future__ import annotations

from jsonargparse import Namespace

from lit_lora.cli import ConfigOnlyCLI, LitLoraCLI, build_cli, config_error_in
from lit_lora.training import run_lock


class ParseOnlyCLI(ConfigOnlyCLI):
    """:class:`ConfigOnlyCLI` with subcommands: the config of ``fit``, ``validate``... is parsed, nothing runs."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def parse(args: list[str]) -> Namespace:
    """The parsed configuration of a command line, e.g. ``["fit", "--config", path]``."""
    return build_cli(args, cli_class=ParseOnlyCLI).config


class BuildOnlyCLI(LitLoraCLI):
    """:class:`LitLoraCLI` that builds the trainer, module and data module of a command and runs nothing."""

    def _run_subcommand(self, subcommand: str) -> None:
        pass


def build(args: list[str]) -> LitLoraCLI:
    """The CLI of a command line (``["fit", ...]``) with its objects built, run-time checks included.

    Raises:
        ConfigError: What ``python -m lit_lora`` would report with exit status 2.
    """
    try:
        return build_cli(args, cli_class=BuildOnlyCLI)
    except Exception as error:
        cause = config_error_in(error)
        if cause is None:
            raise
        raise cause from error
    finally:
        run_lock.release_all()
