"""How a run trains: memory estimate, batch and checkpointing plan, heap, RNG states, optimizer, schedule, stop signals.

Kept free of imports: ``python -m lit_lora`` imports :mod:`lit_lora.training.heap`
before torch.
"""
