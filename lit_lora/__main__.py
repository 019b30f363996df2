"""``python -m lit_lora`` and the ``lit-lora`` command."""

from lit_lora.training.heap import relaunch_with_tuned_heap


def main() -> None:
    """Start the CLI, in a process whose heap runs with lit_lora's glibc settings (:mod:`lit_lora.training.heap`)."""
    # Before torch is imported: the re-executed process starts from here again.
    relaunch_with_tuned_heap()
    from lit_lora.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
