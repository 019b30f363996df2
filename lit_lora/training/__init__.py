"""How a run trains: the memory estimate, the batch and checkpointing plan, the heap, RNG states, optimizer and schedule.

Kept free of imports: ``python -m lit_lora`` imports :mod:`lit_lora.training.heap`
before torch.
"""
