"""Sharded training: the frozen base split over the devices, the adapter on every device.

A LoRA run's memory is the frozen base; the adapter and its optimizer state are about
1% of it. So this strategy shards only what is frozen: each decoder layer, and then
the rest of the base (embeddings, final norm, output head), is handed to PyTorch's
FSDP2 (``fully_shard``), which keeps 1/N of its weights on each of N devices and
all-gathers a layer just before it runs. The trainable parameters are left out of the
sharding (``ignored_params``): every device holds the whole adapter, and the strategy
averages its gradients over the devices once per optimizer step, as DDP would.

What this buys over sharding the adapter too:

- Checkpoints need no gathering: rank 0 writes the adapter and its optimizer state as
  they are, one small file that loads on one device and resumes on any device count.
- Any optimizer works, bitsandbytes' 8-bit and paged ones included: they see plain
  tensors, not sharded ``DTensor``s.
- The gradient all-reduce is one flat buffer of adapter size per step.

Why FSDP2 through Lightning's ``ModelParallelStrategy`` rather than its ``FSDPStrategy``:
the latter refuses CPU outright, flattens a layer's weights into one buffer (so 4-bit
weights must share the compute dtype), and gathers the whole base to rank 0 for every
checkpoint. FSDP2 keeps each parameter separate, runs on gloo, and shards
bitsandbytes' 4-bit weights byte for byte: the packed weight is sharded like any
tensor and gathered back before the layer runs, where bitsandbytes reattaches its
quantization state (``fix_4bit_weight_quant_state_from_module``). The tests check
that a sharded forward and backward equal the unsharded ones exactly.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


class ShardedBaseStrategy(ModelParallelStrategy):
    """FSDP2 over the frozen base with the LoRA adapter replicated; runs on CPU (gloo) and CUDA (NCCL).

    Select it with ``configs/strategies/fsdp2.yaml`` (or ``fsdp_qlora.yaml`` on GPUs).
    Every device trains its own share of each optimizer step's batches, exactly as
    under DDP, so a run's adapter does not depend on the number of devices.

    Args:
        process_group_backend: ``gloo`` or ``nccl``; null picks the one that fits the
            accelerator.
        timeout: How long a collective may wait for the other processes.
    """

    def __init__(self, process_group_backend: str | None = None, timeout: timedelta | None = default_pg_timeout):
        # Adapter-sized single-file checkpoints: see lightning_module_state_dict.
        super().__init__(
            save_distributed_checkpoint=False, process_group_backend=process_group_backend, timeout=timeout
        )

    def setup_environment(self) -> None:
        # One data-parallel dimension over every process of every machine; no tensor parallelism.
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def setup(self, trainer: Trainer) -> None:
        # configure_model has built the model on this device; shard it before the
        # optimizer is built, so the optimizer never sees the unsharded base.
        shard_frozen_base(self.lightning_module, self.device_mesh["data_parallel"])
        super().setup(trainer)

    def optimizer_step(self, optimizer: Any, closure: Any, model: Any = None, **kwargs: Any) -> Any:
        def closure_then_average() -> Any:
            # The closure runs the step's last backward; the average must come after it
            # and before on_before_optimizer_step, which normalises and clips.
            result = closure()
            average_gradients(trainable_parameters(self.lightning_module), self.world_size)
            return result

        return super().optimizer_step(optimizer, closure_then_average, model, **kwargs)

    # Checkpoints: the adapter is whole on every device, so rank 0 writes it as it is,
    # through the trainer's CheckpointIO (atomic), like a single-device run does.
    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The trainable parameters only: the frozen base is rebuilt from its source."""
        return {name: p.detach() for name, p in self.lightning_module.named_parameters() if p.requires_grad}

    def optimizer_state(self, optimizer: Any) -> dict[str, Any]:
        return Strategy.optimizer_state(self, optimizer)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        return Strategy.load_checkpoint(self, checkpoint_path, weights_only)

    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        Strategy.load_model_state_dict(self, checkpoint, strict=strict)

    def load_optimizer_state_dict(self, checkpoint: Any) -> None:
        Strategy.load_optimizer_state_dict(self, checkpoint)

    @property
    def lightning_restore_optimizer(self) -> bool:
        return True


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that train, in a fixed order (the same on every device)."""
    return [p for p in module.parameters() if p.requires_grad]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a transformers model, found by the class names it declares unsplittable.

    Transformers models name them in ``_no_split_modules`` (e.g. ``LlamaDecoderLayer``);
    accelerate's device maps and FSDP auto-wrap policies use the same list.
    """
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def shard_frozen_base(module: LightningModule, mesh: Any) -> None:
    """Shard every frozen weight of ``module.model`` over ``mesh``, a decoder layer at a time.

    Each decoder layer becomes one FSDP2 unit (gathered just before it runs, freed
    after it), then the decoder collects what is left of it (embeddings, final norm),
    and the output head is a unit of its own: the loss calls the decoder and the head
    separately (``LoRAModule.hidden_states``), so each must gather its own weights. A
    head tied to the input embeddings stays whole on every device (a small model's
    trait: sharding it in one place would leave the other holding the whole copy).
    Trainable parameters stay whole on every device (``ignored_params``).

    Args:
        module: The LightningModule whose ``model`` (a PEFT model) is built.
        mesh: The one-dimensional device mesh to shard over.
    """
    from torch.distributed.fsdp import fully_shard

    base = module.model.get_base_model()
    layers = decoder_layers(base)
    if not layers:
        raise ValueError(f"{type(base).__name__} declares no decoder layers (_no_split_modules) to shard")
    head = base.get_output_embeddings()
    tied = {head.weight} & set(base.get_decoder().parameters()) if head is not None else set()
    for unit in [*layers, base.get_decoder()]:
        kept_whole = set(trainable_parameters(unit)) | tied
        fully_shard(unit, mesh=mesh, ignored_params=kept_whole, reshard_after_forward=True)
    if head is not None and not tied:
        fully_shard(head, mesh=mesh, ignored_params=set(trainable_parameters(head)), reshard_after_forward=True)


def average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """Average the gradients of replicated ``parameters`` over the process group, in one all-reduce.

    A parameter without a gradient counts as a zero gradient, so that every process
    reduces a buffer of the same size.
    """
    if world_size == 1 or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = _flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= world_size
    for parameter, grad, synced in zip(parameters, grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)
        parameter.grad = grad
