"""``python -m lit_lora`` and the ``lit-lora`` command."""

import sys

from lit_lora.training.heap import relaunch_with_tuned_heap, restart_pays
from lit_lora.training.kernel_cache import bound_primitive_cache


def main() -> None:
    """Start the CLI; a training command first restarts with glibc heap settings (:mod:`lit_lora.training.heap`).

    oneDNN's primitive cache is bounded first (:mod:`lit_lora.training.kernel_cache`),
    and the restarted process inherits it.
    """
    bound_primitive_cache()
    # Before torch is imported: the re-executed process starts from here again.
    if restart_pays(sys.argv[1:]):
        relaunch_with_tuned_heap()
    from lit_lora.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
