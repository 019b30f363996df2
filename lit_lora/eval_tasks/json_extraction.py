"""Documents and scores of the ``lit_lora_json_extraction`` lm-eval tasks.

The documents are the quickstart's held-out split: ``quickstart_val.jsonl`` next to
this module is a byte-for-byte copy of ``data/quickstart/val.jsonl`` (written by
``scripts/make_quickstart_data.py``; ``tests/commands/test_evaluate.py`` fails when
the two differ). The copy is shipped inside the package and loaded through the
tasks' ``custom_dataset`` function, because lm-eval hands ``dataset_kwargs.data_files``
to ``datasets`` as written, so a relative path there would be read against the
current directory, not against the task's YAML file. The file is read without
``datasets.load_dataset``, whose loader for local JSON files still contacts the Hub
(a download counter) unless ``HF_HUB_OFFLINE`` was set before ``datasets`` was imported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict

from lit_lora.callbacks.generation import exact_match
from lit_lora.data.formats import to_conversation

DATA_FILE = Path(__file__).with_name("quickstart_val.jsonl")


def load_docs(**metadata: Any) -> DatasetDict:
    """The tasks' documents, as the ``test`` split: a ``prompt`` and its reference ``answer``.

    Each line of the file is a ``messages`` conversation of one user turn and the
    assistant's answer; ``prompt`` is the user turn's text, ``answer`` the answer's.

    Args:
        **metadata: The task's ``metadata``, which lm-eval passes to every
            ``custom_dataset`` function; not used.
    """
    lines = DATA_FILE.read_text(encoding="utf-8").splitlines()
    conversations = [to_conversation(json.loads(line), "messages") for line in lines if line.strip()]
    docs = [{"prompt": user["content"], "answer": assistant["content"]} for *_, user, assistant in conversations]
    return DatasetDict({"test": Dataset.from_list(docs)})


def score_answer(doc: dict[str, str], results: list[tuple[float, bool]]) -> dict[str, Any]:
    """Scores of one log-likelihood request: the answer given the prompt.

    Args:
        doc: The document, with its reference ``answer``.
        results: lm-eval's one ``(log-likelihood, is_greedy)`` pair for the answer.

    Returns:
        ``bits_per_byte``: the log-likelihood with the answer's UTF-8 byte count, which
        lm-eval's ``bits_per_byte`` aggregation turns into ``-sum(ll) / sum(bytes) / ln 2``
        over all documents; ``greedy_match``: 1.0 when every answer token is the most
        likely one, that is when greedy decoding would write the answer.
    """
    ((loglikelihood, is_greedy),) = results
    return {
        "bits_per_byte": (loglikelihood, len(doc["answer"].encode("utf-8"))),
        "greedy_match": float(is_greedy),
    }


def score_generation(doc: dict[str, str], results: list[str]) -> dict[str, float]:
    """Scores of one greedy generation against the reference answer.

    Args:
        doc: The document, with its reference ``answer``.
        results: lm-eval's one generated text.

    Returns:
        ``exact_match``: 1.0 when the text equals the answer up to surrounding
        whitespace; ``json_match``: 1.0 when it parses to the same JSON value.
    """
    (generation,) = results
    return {
        "exact_match": float(exact_match(generation, doc["answer"])),
        "json_match": float(same_json(generation, doc["answer"])),
    }


def same_json(text: str, reference: str) -> bool:
    """Whether ``text`` is JSON with the same value as the (valid JSON) ``reference``.

    Args:
        text: A generated answer.
        reference: The reference answer.
    """
    try:
        return json.loads(text) == json.loads(reference)
    except json.JSONDecodeError:
        return False
