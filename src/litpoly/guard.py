"""Keeping a run safe: divergence, interruption, and checkpoints that are never half-written.

Lightning 2.6 leaves three gaps that a template must not pass on to its users:

- A loss that turns NaN keeps training (EarlyStopping's finite check only runs at validation or
  epoch end), and checkpoints of the NaN model overwrite good ones.
- Ctrl-C or SIGTERM in the middle of a step can land between two parameter updates, and SIGTERM
  exits with status 0; no checkpoint of the last completed step is written.
- Checkpoints are written in place: a process killed while writing one leaves a truncated file.

:class:`RunGuard` checks the loss and the coefficients after every step, turns SIGINT/SIGTERM into
a stop at the next step boundary with a checkpoint, warns about an SGD lr above the stability
limit before training starts, and saves ``last.ckpt`` at the end of training.
:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it into place,
and refuses to write a model with non-finite weights.
"""

from __future__ import annotations

import math
import os
import signal
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

from litpoly import reference
from litpoly.callbacks import say
from litpoly.data import SineDataModule
from litpoly.model import PolynomialRegressor


def resolve_checkpoint(ckpt_path: str, logs: Path) -> Path:
    """The file ``--ckpt_path`` means: a path as given, or for ``last`` the newest ``last.ckpt`` under ``logs``.

    Lightning's own ``last`` looks only in the *new* run's folder, which is empty when a new command
    resumes an old run; here it means the newest run's ``checkpoints/last.ckpt``.

    Raises:
        ValueError: One line naming the setting, when there is no such file.
    """
    if ckpt_path == "last":
        candidates = list(logs.glob("version_*/checkpoints/last.ckpt"))
        if not candidates:
            raise ValueError(f"`ckpt_path` last: no run under {logs} has a checkpoints/last.ckpt to resume from")
        return max(candidates, key=lambda p: p.stat().st_mtime)
    if ckpt_path in ("best", "hpc", "registry"):
        raise ValueError(f"`ckpt_path` {ckpt_path!r} is not supported here: give a checkpoint file or 'last'")
    path = Path(ckpt_path)
    if not path.is_file():
        raise ValueError(f"`ckpt_path`: no such checkpoint file: {ckpt_path}")
    return path


def checkpoint_degree(path: Path) -> int | None:
    """Read ``path`` (weights only) and return the polynomial degree it holds (``None`` if not litpoly's).

    Raises:
        ValueError: One line, when the file is truncated, corrupt or not a Lightning checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, pickle garbage, wrong format: all mean "unreadable"
        raise ValueError(
            f"`ckpt_path` {path} is not a readable checkpoint (truncated or corrupt?): {type(error).__name__}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"`ckpt_path` {path} is not a Lightning checkpoint (it has no state_dict)")
    coefficients = checkpoint["state_dict"].get("coefficients")
    return None if coefficients is None else int(coefficients.shape[0]) - 1


class TrainingStopped(Exception):
    """A run that ended early for a reason the user must see: the message is one line, ``exit_code`` is set."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteCheckpointError(RuntimeError):
    """Raised instead of writing a checkpoint whose weights are NaN or infinite."""


def _all_finite(state_dict: dict[str, Any]) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if torch.is_tensor(v) and v.is_floating_point())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe against kills: write a temporary file, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so a checkpoint path holds either the previous
    complete file or the new complete file, whenever the process dies. (This protects against
    the process being killed; surviving a power cut would also need an fsync.) Remote paths
    (``s3://`` …) are written as Lightning writes them.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if not _all_finite(checkpoint.get("state_dict", {})):
            raise NonFiniteCheckpointError(f"refusing to write {path}: the model's weights are not finite")
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, with a default made for one long epoch and a cached ``state_key``.

    - Saving by steps or time (``every_n_train_steps``, ``train_time_interval``) with no ``monitor``,
      ``save_on_train_epoch_end`` defaults to true: no save is tied to validation then, but for this
      Trainer (validation counted in steps) Lightning would look for one after every validation,
      copying all logged metrics each time (~0.5 ms). Otherwise Lightning's default stands (with a
      ``monitor``, or saving every epoch, the save belongs after validation).
    - Lightning names each callback by its ``state_key`` whenever it calls one of its hooks, six times a
      step; ``ModelCheckpoint`` builds that string anew from its settings each time, ~10 µs a step here.
      The settings do not change after ``__init__``, so neither does the key. It is ``ModelCheckpoint``'s
      own key, so checkpoints written with either class restore the other's state.

    Every other setting is ``ModelCheckpoint``'s.

    Args:
        monitor: Logged metric that ranks checkpoints (e.g. ``val/mse``); ``None`` keeps the latest.
        save_on_train_epoch_end: Look for a save at the end of the training epoch rather than after each
            validation. Default: true when saving by steps or time without a ``monitor``, else Lightning's choice.
    """

    def __init__(
        self, *, monitor: str | None = None, save_on_train_epoch_end: bool | None = None, **kwargs: Any
    ) -> None:
        by_steps_or_time = kwargs.get("every_n_train_steps") or kwargs.get("train_time_interval")
        by_epochs = kwargs.get("every_n_epochs")
        if save_on_train_epoch_end is None and monitor is None and by_steps_or_time and not by_epochs:
            save_on_train_epoch_end = True
        super().__init__(monitor=monitor, save_on_train_epoch_end=save_on_train_epoch_end, **kwargs)

    @cached_property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)


class RunGuard(L.Callback):
    """Stops diverged runs at once, interrupts cleanly on SIGINT/SIGTERM, and saves the final state.

    Args:
        check_finite: Check the loss and coefficients after every step (one device sync a step).
    """

    def __init__(self, check_finite: bool = True) -> None:
        self.check_finite = check_finite
        self._signal: int | None = None
        self._limit: float | None = None  # SGD's stability limit for this run, computed once at train start
        self._previous_handlers: dict[int, Any] = {}

    # -- where checkpoints go --------------------------------------------------------------
    @staticmethod
    def last_checkpoint(trainer: L.Trainer) -> Path | None:
        """The run's ``last.ckpt`` (``None`` when checkpointing is off)."""
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
            return None
        return Path(callback.last_model_path or Path(callback.dirpath) / "last.ckpt")

    @staticmethod
    def _stability_limit(trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """SGD's limit 2/λmax(2XᵀX) on all training points; ``None`` when it does not apply."""
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(pl_module, PolynomialRegressor) or pl_module.optimizer_name != "sgd":
            return None
        if not isinstance(datamodule, SineDataModule) or datamodule.batch_size is not None:
            return None  # mini-batch SGD: each step sees a different, smaller sum
        return reference.sgd_stability_limit(datamodule.train_x.numpy(), pl_module.degree)

    def _save_last(self, trainer: L.Trainer) -> Path | None:
        if trainer.sanity_checking:
            return None
        path = self.last_checkpoint(trainer)
        if path is not None:
            trainer.save_checkpoint(path, weights_only=False)
        return path

    # -- before training: the SGD stability limit -------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_signal_handlers()
        self._limit = limit = self._stability_limit(trainer, pl_module)
        if limit is not None and isinstance(pl_module, PolynomialRegressor) and pl_module.lr >= limit:
            say(
                f"Warning: SGD lr {pl_module.lr:g} is above the stability limit 2/λmax(2XᵀX) = {limit:.3g} "
                "for these points: the loss will grow every step.",
                stderr=True,
            )

    # -- every step: divergence and signals ---------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Runs after every step, so it is kept to one device sync and ~3 µs (a raw 2000-point step: 65 µs).
        diverged = False
        if self.check_finite and isinstance(outputs, dict) and isinstance(pl_module, PolynomialRegressor):
            # The loss of this step and the coefficients it produced, in one number and one sync: a
            # NaN or inf anywhere makes the sum non-finite.
            diverged = not math.isfinite(float(outputs["sse"] + pl_module.coefficients.detach().sum()))
        interrupted = self._signal is not None
        if trainer.world_size > 1:
            # Under DDP every decision to stop is agreed by all processes (a collective, so only there):
            # a process stopping alone would leave the others waiting in the next gradient all-reduce,
            # and a signal often reaches one process only (SIGTERM to the launcher).
            diverged = trainer.strategy.reduce_boolean_decision(diverged, all=False)
            interrupted = trainer.strategy.reduce_boolean_decision(interrupted, all=False)
        if diverged:
            assert isinstance(pl_module, PolynomialRegressor) and isinstance(outputs, dict)
            self._diverged(trainer, pl_module, float(outputs["sse"]))
        if interrupted:
            self._interrupted(trainer)

    def _diverged(self, trainer: L.Trainer, pl_module: PolynomialRegressor, loss: float) -> None:
        step = trainer.global_step - 1
        what = f"the loss is {loss}" if not math.isfinite(loss) else "the coefficients are no longer finite"
        limit = self._limit
        advice = f"; SGD is stable only for lr < {limit:.3g} on this data" if limit is not None else ""
        last = self.last_checkpoint(trainer)
        kept = (
            f" Last good checkpoint: {last}."
            if last is not None and last.is_file()
            else " No checkpoint was written before it."
        )
        settings = f"{pl_module.optimizer_name}, lr={pl_module.lr:g}{advice}"
        raise TrainingStopped(f"training diverged at step {step}: {what} ({settings}).{kept}", exit_code=1)

    def _interrupted(self, trainer: L.Trainer) -> None:
        signum = self._signal if self._signal is not None else signal.SIGTERM  # another process got it
        step = trainer.global_step
        path = self._save_last(trainer)
        name = signal.Signals(signum).name
        if path is None:
            message = f"{name}: stopped after step {step}; checkpointing is off, so nothing was saved."
        else:
            message = (
                f"{name}: stopped after step {step}; checkpoint saved to {path}. "
                f"Resume with the same settings plus: --ckpt_path {path}"
            )
        raise TrainingStopped(message, exit_code=128 + signum)

    def _install_signal_handlers(self) -> None:
        if self._previous_handlers:
            return
        self._signal = None

        def request_stop(signum: int, frame: FrameType | None) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without waiting for the step to end
            self._signal = signum

        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous_handlers[signum] = signal.signal(signum, request_stop)
        except ValueError:  # not the main thread (e.g. a notebook worker): keep Lightning's handling
            self._restore_signal_handlers()

    def _restore_signal_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    # -- the end ----------------------------------------------------------------------------
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_signal_handlers()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint's last.ckpt holds the last *periodic* save (every `every_n_train_steps`,
        # or after a validation), which need not be the final step. Overwrite it with the final
        # state once ModelCheckpoint is done (on_fit_end runs after every callback's on_train_end).
        self._save_last(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_signal_handlers()
