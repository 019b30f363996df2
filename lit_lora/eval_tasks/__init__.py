"""lm-evaluation-harness tasks that ship with lit_lora and run offline.

``python -m lit_lora evaluate`` always adds :data:`TASKS_DIR` to lm-eval's include
path, next to the folders given with ``--include_path``. Installed with the package
(as package data), these tasks need neither the network nor a checkout:

- ``lit_lora_json_extraction``: log-likelihood of the reference JSON answer to each
  of the quickstart's 40 held-out prompts; ``bits_per_byte`` (lower is better) and
  ``greedy_match``, the share of answers that greedy decoding reproduces exactly.
- ``lit_lora_json_extraction_gen``: greedy generation on the same prompts;
  ``exact_match`` (as the quickstart's generation preview scores it) and
  ``json_match`` (the same JSON value, whatever the layout).

The tag ``lit_lora`` names both. Their code and data are in
:mod:`lit_lora.eval_tasks.json_extraction`.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).parent
