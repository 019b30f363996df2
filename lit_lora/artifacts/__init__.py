"""What a run reads and writes on disk: model sources, the tokenizer, adapter folders, model cards, checkpoint files."""
