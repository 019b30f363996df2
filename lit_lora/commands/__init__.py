"""Subcommands that are not a Trainer stage: ``merge``, ``generate``, ``evaluate``, ``preview``, ``estimate``, ``plot``.

Each is one function whose signature and Google-style docstring are its command
line (``python -m lit_lora merge --help``); jsonargparse builds the parser, so the
options also read from ``--config file.yaml``. ``preview`` and ``estimate`` instead
read a whole ``fit`` command line, so their functions parse the arguments themselves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

# name -> "module:function", imported only when that command runs: ``fit`` never pays
# for lm-eval's import, and a missing optional extra only breaks its own command.
COMMANDS = {
    "merge": "lit_lora.commands.merge:merge",
    "generate": "lit_lora.commands.generate:generate",
    "evaluate": "lit_lora.commands.evaluate:evaluate",
    "preview": "lit_lora.commands.preview:main",
    "estimate": "lit_lora.commands.estimate:main",
    "plot": "lit_lora.commands.plot:plot",
}
# Commands whose function takes the raw arguments: their command line is ``fit``'s.
FIT_COMMAND_LINE = {"preview", "estimate"}
# Commands whose required arguments are positional: ``plot <run dir>``.
POSITIONAL = {"plot"}


def command(name: str) -> Callable[..., Any]:
    """The function behind subcommand ``name``."""
    module, function = COMMANDS[name].split(":")
    return getattr(importlib.import_module(module), function)


def run_command(name: str, args: Sequence[str]) -> Any:
    """Parse ``args`` against command ``name``'s signature and run it."""
    from jsonargparse import auto_cli

    function = command(name)
    if name in FIT_COMMAND_LINE:
        return function(list(args))
    return auto_cli(function, args=list(args), as_positional=name in POSITIONAL, prog=f"python -m lit_lora {name}")
