"""Secrets stay on the machine: settings that look like credentials are blanked before publishing.

An adapter folder is made to be shared, and its ``training_config.yaml`` holds the
whole run configuration, a logger's API key included when it was configured in
YAML. A key is taken for a secret when its name's last word is ``key``, ``token``,
``secret``, ``password`` (or ``apikey``, ``passwd``...), or any word of it is
``secret``/``password``, in any case and with ``_``, ``-`` or camelCase between
words: ``api_key``, ``hf_token``, ``WANDB_API_KEY``, ``clientSecret``. Settings that
merely mention tokens (``max_new_tokens``, ``pad_token_id``, ``tokenizer_name_or_path``)
and a tokenizer's special tokens (``eos_token``, ``pad_token``) are not.
"""

from __future__ import annotations

import re
from typing import Any

LAST_WORDS = frozenset({"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credentials"})
ANY_WORDS = frozenset({"secret", "password", "passwd"})
SPECIAL_TOKENS = frozenset({"bos", "eos", "pad", "unk", "sep", "cls", "mask", "special"})
# Where a redacted value was, in the saved YAML: null, so that a rerun falls back to
# the environment variable most loggers read (WANDB_API_KEY, COMET_API_KEY...).
REDACTED = None


def is_secret_name(name: str) -> bool:
    """Whether a setting called ``name`` holds a credential (see the module's rule)."""
    words = [w.lower() for w in re.findall(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])", name)]
    if not words:
        return False
    if words[-1] == "token" and len(words) > 1 and words[-2] in SPECIAL_TOKENS:
        return False
    return words[-1] in LAST_WORDS or not ANY_WORDS.isdisjoint(words)


def redact(value: Any, path: str = "") -> tuple[Any, list[str]]:
    """``value`` (plain YAML data) with every secret's value replaced by null.

    Args:
        value: Mappings, lists and scalars, as ``yaml.safe_load`` gives them.
        path: The dotted name of ``value``, prefixed to the names returned.

    Returns:
        The redacted copy, and the dotted names of the values removed.
    """
    if isinstance(value, dict):
        result, removed = {}, []
        for key, item in value.items():
            name = f"{path}.{key}" if path else str(key)
            if is_secret_name(str(key)) and item not in (None, ""):
                result[key], removed = REDACTED, [*removed, name]
                continue
            result[key], found = redact(item, name)
            removed += found
        return result, removed
    if isinstance(value, list):
        result, removed = [], []
        for index, item in enumerate(value):
            redacted, found = redact(item, f"{path}[{index}]")
            result.append(redacted)
            removed += found
        return result, removed
    return value, []
