"""Training diagnostics: the usual failure signs, reported when they happen.

Each message names the likely cause and the setting to change. Divergence (a NaN or
Inf loss or gradient, or a finite loss that exploded past chance) stops the run with
:class:`TrainingDiverged` and rewrites ``last.ckpt`` with the newest state whose loss
was checked healthy, so ``--ckpt_path last`` with a lower learning rate carries on from
there. The other signs (flat loss, loss and gradient-norm spikes, adapter weights that
stopped moving, overfitting) warn once each. The rules are plain functions on numbers
so they can be tested alone.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_lora.errors import ConfigError

LR_SETTING = "model.init_args.optimizer.init_args.lr"


class TrainingDiverged(ConfigError):
    """The loss or the gradients became NaN or Inf; the message says what to try.

    A :class:`ConfigError` because the fix is a setting (or the data): the CLI ends
    with the message alone and a non-zero exit status, not a traceback.
    """


def is_spike(history: Sequence[float], value: float, factor: float) -> bool:
    """Whether ``value`` exceeds ``factor`` times the median of ``history`` (a non-empty window)."""
    return bool(history) and value > factor * statistics.median(history)


def is_flat(losses: Sequence[float], tolerance: float) -> bool:
    """Whether ``losses`` stayed within ``tolerance`` (a fraction) of the first one."""
    return max(losses) - min(losses) <= tolerance * abs(losses[0])


def is_overfitting(val_losses: Sequence[float], train_losses: Sequence[float], patience: int) -> bool:
    """Whether validation loss rose at each of the last ``patience`` evaluations while training loss fell.

    Args:
        val_losses: Validation loss of each evaluation so far.
        train_losses: Mean training loss of the steps before each evaluation.
        patience: How many rises in a row count.
    """
    if len(val_losses) <= patience:
        return False
    recent = val_losses[-patience - 1 :]
    rising = all(later > earlier for earlier, later in itertools.pairwise(recent))
    return rising and train_losses[-1] < train_losses[-patience - 1]


def is_exploded(loss: float, first_loss: float, chance_loss: float) -> bool:
    """Whether ``loss`` is above both ``chance_loss`` and twice ``first_loss``.

    A model that scores worse than guessing uniformly has diverged even while its loss
    stays finite (pre-norm transformers keep it finite for a long while: at lr 10 the
    quickstart's loss goes 0.59, 14, 27, 47). The second bound keeps a randomly
    initialised model, which starts at about chance, from tripping it.
    """
    return loss > max(chance_loss, 2.0 * first_loss)


def relative_change(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]) -> float:
    """``‖after − before‖ / ‖before‖`` over all tensors together (1.0 from all-zero weights)."""
    delta = math.sqrt(sum(float((a.float() - b.float()).square().sum()) for a, b in zip(after, before)))
    size = math.sqrt(sum(float(b.float().square().sum()) for b in before))
    return delta / size if size > 0 else (1.0 if delta > 0 else 0.0)


class TrainingDiagnostics(Callback):
    """Watches loss, gradient norm, adapter weights and validation loss while fitting.

    Reads ``train/loss`` and ``train/grad_norm`` as the module logs them at each
    optimizer step, and ``val/loss`` after each validation. Warnings come once per kind.

    Args:
        stop_on_divergence: Stop the run with an error when the loss or the gradients
            become NaN or Inf, or the loss exceeds both chance (the module's
            ``chance_loss()``, ``ln(vocabulary size)`` for a language model) and twice
            the first step's loss. False only warns (with fp16 the grad scaler already
            skips steps whose gradients overflow; those are not reported).
        keep_last_good: On divergence, rewrite ``last.ckpt`` in the checkpoint folder with
            the newest state whose loss was checked healthy (the run's start, at worst).
            Costs an in-memory copy of the adapter and optimizer state per step.
        window: Optimizer steps whose median loss and gradient norm a spike is measured
            against; spikes are looked for once this many steps have passed.
        loss_spike_factor: A step loss above this many times the window's median is a spike.
        grad_norm_spike_factor: A gradient norm above this many times the window's
            median is a spike.
        flat_loss_steps: Optimizer steps at the start over which the loss must move;
            0 turns the check off.
        flat_loss_tolerance: The loss is flat when it stays within this fraction of its
            first value over ``flat_loss_steps``.
        stale_every_n_steps: Compare the trainable weights with their copy from this many
            optimizer steps before; 0 turns the check off (it keeps one copy of them).
        stale_tolerance: The adapter has stopped changing when its relative change over
            ``stale_every_n_steps`` is below this, while the learning rate is still at
            least a tenth of its peak.
        overfit_patience: Warn when validation loss rose this many evaluations in a row
            while training loss fell.
        early_stop_patience: Stop fitting after this many evaluations without a new
            lowest validation loss; null never stops early.
    """

    def __init__(
        self,
        stop_on_divergence: bool = True,
        keep_last_good: bool = True,
        window: int = 20,
        loss_spike_factor: float = 3.0,
        grad_norm_spike_factor: float = 10.0,
        flat_loss_steps: int = 50,
        flat_loss_tolerance: float = 0.01,
        stale_every_n_steps: int = 100,
        stale_tolerance: float = 1e-4,
        overfit_patience: int = 2,
        early_stop_patience: int | None = None,
    ) -> None:
        if window < 1 or overfit_patience < 1 or (early_stop_patience is not None and early_stop_patience < 1):
            raise ConfigError("diagnostics: window, overfit_patience and early_stop_patience must be >= 1.")
        self.stop_on_divergence = stop_on_divergence
        self.keep_last_good = keep_last_good
        self.window = window
        self.loss_spike_factor = loss_spike_factor
        self.grad_norm_spike_factor = grad_norm_spike_factor
        self.flat_loss_steps = flat_loss_steps
        self.flat_loss_tolerance = flat_loss_tolerance
        self.stale_every_n_steps = stale_every_n_steps
        self.stale_tolerance = stale_tolerance
        self.overfit_patience = overfit_patience
        self.early_stop_patience = early_stop_patience
        self._losses: deque[float] = deque(maxlen=window)
        self._grad_norms: deque[float] = deque(maxlen=window)
        self._first_losses: list[float] = []
        self._train_since_val: list[float] = []
        self._val_losses: list[float] = []
        self._train_means: list[float] = []
        self._snapshot: list[torch.Tensor] | None = None
        self._peak_lr = 0.0
        self._stepped = False
        self._warned: set[str] = set()
        self._chance_loss: float | None = None
        self._first_loss: float | None = None
        # Checkpoints held in memory: ``_verified`` was written before a step whose loss
        # was healthy; ``_pending`` holds the weights the next step trains with.
        self._verified: dict[str, Any] | None = None
        self._pending: dict[str, Any] | None = None

    # ------------------------------------------------------------------ resuming
    def state_dict(self) -> dict[str, Any]:
        """What the checks have seen so far, saved in each checkpoint so that a resumed run carries on.

        The spike windows, the first loss (the divergence bound), the flat-loss steps,
        the evaluations behind the overfitting and early-stopping checks, the peak
        learning rate and the warnings given. Not the weights copy of the stale check
        (the next comparison starts from the resumed weights) nor the in-memory
        checkpoints (the resumed run's start is its checkpoint file).
        """
        return {
            "losses": list(self._losses),
            "grad_norms": list(self._grad_norms),
            "first_losses": list(self._first_losses),
            "train_since_val": list(self._train_since_val),
            "val_losses": list(self._val_losses),
            "train_means": list(self._train_means),
            "peak_lr": self._peak_lr,
            "warned": sorted(self._warned),
            "first_loss": self._first_loss,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Carry on from :meth:`state_dict` of the run being resumed."""
        # A resumed run may set another window: the newest values fill the new one.
        self._losses = deque(state_dict["losses"], maxlen=self.window)
        self._grad_norms = deque(state_dict["grad_norms"], maxlen=self.window)
        self._first_losses = list(state_dict["first_losses"])
        self._train_since_val = list(state_dict["train_since_val"])
        self._val_losses = list(state_dict["val_losses"])
        self._train_means = list(state_dict["train_means"])
        self._peak_lr = state_dict["peak_lr"]
        self._warned = set(state_dict["warned"])
        self._first_loss = state_dict["first_loss"]

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        chance = getattr(pl_module, "chance_loss", None)
        self._chance_loss = chance() if callable(chance) else None
        # The first loss is not reset here: a resumed run's comes from load_state_dict.
        self._verified = self._pending = None
        # A resumed run's starting state is its checkpoint file; a new run's is this.
        if self.keep_last_good and trainer.ckpt_path is None:
            self._pending = self._dump_checkpoint(trainer)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        # Callbacks run before the module's hook and before the optimizer: the last
        # moment the weights are still good. The fp16 grad scaler skips overflowing
        # steps on its own, so its non-finite gradients are not divergence.
        self._stepped = True
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # One fused reduction and one device sync per step, not one per tensor: a NaN or
        # Inf anywhere makes that tensor's norm non-finite.
        if grads and not bool(torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(grads)])).all()):
            self._diverged(trainer, "the gradients are NaN or Inf", stopped_before_update=True)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Runs after the module logged the step and before the checkpoint callbacks
        # (Lightning calls those last), so stopping here keeps this step out of them.
        if not self._stepped:
            return
        self._stepped = False
        metrics = trainer.callback_metrics
        if "train/loss" not in metrics:
            return
        loss = float(metrics["train/loss"])
        if not math.isfinite(loss):
            self._diverged(trainer, f"the loss is {loss}", stopped_before_update=False)
            return
        if self._first_loss is None:
            self._first_loss = loss
        elif self._chance_loss is not None and is_exploded(loss, self._first_loss, self._chance_loss):
            self._diverged(
                trainer,
                f"the loss exploded to {loss:.4g}, worse than guessing uniformly ({self._chance_loss:.4g}) and over "
                f"twice the first step's {self._first_loss:.4g}",
                stopped_before_update=False,
            )
            return
        if self.keep_last_good:
            self._verified, self._pending = self._pending, self._dump_checkpoint(trainer)
        self._check_loss(loss, trainer)
        if "train/grad_norm" in metrics:
            self._check_grad_norm(float(metrics["train/grad_norm"]))
        self._check_stale(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics or not self._train_since_val:
            return
        self._val_losses.append(float(trainer.callback_metrics["val/loss"]))
        self._train_means.append(statistics.fmean(self._train_since_val))
        self._train_since_val = []
        if is_overfitting(self._val_losses, self._train_means, self.overfit_patience):
            self._warn_once(
                "overfitting",
                f"validation loss rose {self.overfit_patience} evaluations in a row while training loss fell: "
                "the adapter is overfitting. The lowest-val-loss checkpoint is kept as best.ckpt; train fewer "
                "epochs (trainer.max_epochs), lower the learning rate, raise model.init_args.lora.dropout, "
                "add data, or stop early with diagnostics.early_stop_patience.",
            )
        if self.early_stop_patience is not None:
            best = self._val_losses.index(min(self._val_losses))
            if len(self._val_losses) - 1 - best >= self.early_stop_patience:
                rank_zero_info(
                    f"lit_lora: stopping early: no lower validation loss in {self.early_stop_patience} "
                    "evaluations (diagnostics.early_stop_patience); the best is kept as best.ckpt"
                )
                trainer.should_stop = True

    # ------------------------------------------------------------------ checks
    def _check_loss(self, loss: float, trainer: Trainer) -> None:
        self._train_since_val.append(loss)
        if len(self._losses) == self.window and is_spike(self._losses, loss, self.loss_spike_factor):
            self._warn_once(
                "loss_spike",
                f"the loss jumped to {loss:.4g}, over {self.loss_spike_factor}x its median of the last "
                f"{self.window} steps: lower the learning rate ({LR_SETTING}), clip gradients harder "
                "(trainer.gradient_clip_val), or look for unusual examples in the data.",
            )
        self._losses.append(loss)
        if self.flat_loss_steps and len(self._first_losses) < self.flat_loss_steps:
            self._first_losses.append(loss)
            if len(self._first_losses) == self.flat_loss_steps and is_flat(
                self._first_losses, self.flat_loss_tolerance
            ):
                lr = trainer.optimizers[0].param_groups[0]["lr"]
                self._warn_once(
                    "flat_loss",
                    f"the loss moved less than {self.flat_loss_tolerance:.0%} over the first {self.flat_loss_steps} "
                    f"steps: the learning rate (now {lr:.3g}, {LR_SETTING}) may be too low, or nothing is "
                    "trained (check the 'training N of M parameters' line and model.init_args.lora.target_modules).",
                )

    def _check_grad_norm(self, grad_norm: float) -> None:
        if len(self._grad_norms) == self.window and is_spike(self._grad_norms, grad_norm, self.grad_norm_spike_factor):
            self._warn_once(
                "grad_norm_spike",
                f"the gradient norm jumped to {grad_norm:.4g}, over {self.grad_norm_spike_factor}x its median of the "
                f"last {self.window} steps: keep or tighten clipping (trainer.gradient_clip_val), lower the "
                f"learning rate ({LR_SETTING}) or lengthen the warmup (model.init_args.scheduler.warmup_ratio).",
            )
        self._grad_norms.append(grad_norm)

    def _check_stale(self, trainer: Trainer, pl_module: LightningModule) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self._peak_lr = max(self._peak_lr, lr)
        if not self.stale_every_n_steps or trainer.global_step % self.stale_every_n_steps:
            return
        weights = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        # Near the end of a decaying schedule small updates are expected, not a fault.
        if self._snapshot is not None and lr >= 0.1 * self._peak_lr:
            change = relative_change(self._snapshot, weights)
            if change < self.stale_tolerance:
                self._warn_once(
                    "stale_weights",
                    f"the trainable weights changed by only {change:.2e} (relative) over the last "
                    f"{self.stale_every_n_steps} steps at learning rate {lr:.3g}: raise the learning rate "
                    f"({LR_SETTING}), check the gradients are not all clipped away (trainer.gradient_clip_val) "
                    "and that the loss is not already zero.",
                )
        self._snapshot = [w.clone() for w in weights]

    # ------------------------------------------------------------------ reporting
    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            rank_zero_warn(f"lit_lora diagnostics: {message}")

    def _diverged(self, trainer: Trainer, what: str, stopped_before_update: bool) -> None:
        optimizer = trainer.optimizers[0]
        precision = str(trainer.precision)
        advice = [
            f"a lower learning rate ({LR_SETTING}, set to {optimizer.defaults.get('lr')})",
            "a longer warmup (model.init_args.scheduler.warmup_ratio)",
            f"gradient clipping (trainer.gradient_clip_val, now {trainer.gradient_clip_val})",
            "checking the data for empty or broken examples",
        ]
        if precision.startswith("16"):
            advice.insert(1, f"bf16-mixed instead of {precision} (trainer.precision)")
        # The diverging step trained with the weights of the step before it, so those
        # are already bad; the newest good ones are from two steps back.
        step = trainer.global_step + stopped_before_update
        message = (
            f"training diverged at step {step}: {what}. {self._keep_last_good(trainer, step)} Try {', '.join(advice)}."
        )
        if not self.stop_on_divergence:
            self._warn_once("diverged", message)
            return
        raise TrainingDiverged(message)

    def _keep_last_good(self, trainer: Trainer, step: int) -> str:
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if not self.stop_on_divergence or folder is None:
            return f"Checkpoints of step {step - 2} or earlier hold good weights."
        if self._verified is None:
            if trainer.ckpt_path is not None:
                return f"The newest good state is the checkpoint this run resumed from, {trainer.ckpt_path}."
            return "No state before it was checked healthy: start over."
        path = Path(folder) / "last.ckpt"
        trainer.strategy.save_checkpoint(self._verified, path)
        return (
            f"{path} now holds step {self._verified['global_step']}, the newest state checked healthy (later step "
            "checkpoints hold diverged weights): resume with --ckpt_path last and one of these changes."
        )

    @staticmethod
    def _dump_checkpoint(trainer: Trainer) -> dict[str, Any]:
        """The checkpoint Lightning would write now, with its tensors copied to the CPU."""
        return _copy_tensors(trainer._checkpoint_connector.dump_checkpoint(weights_only=False))


def _copy_tensors(value: Any) -> Any:
    # The optimizer state in a dumped checkpoint is the live one, updated in place by the
    # next step; a copy keeps it as of now. Other values are rebuilt or immutable.
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {key: _copy_tensors(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy_tensors(item) for item in value)
    return value
