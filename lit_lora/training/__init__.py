"""How a run trains: memory estimate, batch and checkpointing plan, heap, RNG states, optimizer and schedule.

Kept free of imports: ``python -m lit_lora`` imports :mod:`lit_lora.training.heap`
before torch.
"""
