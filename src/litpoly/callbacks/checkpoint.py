"""Checkpoint callbacks: saved on a schedule cheaply, the best one kept, a run stopped when it no longer improves.

- :class:`PeriodicCheckpoint` is Lightning's ``ModelCheckpoint`` with a default suited to runs that count
  steps, and its ``state_key`` computed once (``--checkpoint.*``; ``last.ckpt`` on every run).
- :class:`BestSettings` (``--best.*``) keeps ``best.ckpt`` with a :class:`BestCheckpoint`;
  :class:`EarlyStoppingSettings` (``--early_stopping.*``) stops on the same metric with a
  :class:`StopWhenNotImproving`. A monitored metric the model never logs is one line at the first validation.

Where checkpoints are found is :mod:`litpoly.runs`; how they are read, :mod:`litpoly.checkpoint_file`; how they are
written, :class:`litpoly.plugins.AtomicCheckpointIO`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Literal

import lightning as L
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from litpoly import compat
from litpoly.errors import SettingError
from litpoly.runs import run_name


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, with a default made for runs that count steps, and a cached ``state_key``.

    A drop-in: every setting is ``ModelCheckpoint``'s, and so is the key its state is saved under, so
    checkpoints written with either class restore the other's state. Five differences:

    - Saving by steps or time (``every_n_train_steps``, ``train_time_interval``) with no ``monitor``,
      ``save_on_train_epoch_end`` defaults to true: no save is tied to validation then, but when validation
      is counted in steps Lightning would look for one after every validation, copying all logged metrics
      each time. Otherwise Lightning's default stands (with a ``monitor``, or saving every epoch, the save
      belongs after validation).
    - Lightning names each callback by its ``state_key`` whenever it calls one of its hooks, several times a
      step; ``ModelCheckpoint`` builds that string anew from its settings each time. The settings do not
      change after ``__init__``, so neither does the key: it is built once.
    - ``fast_dev_run`` writes no ``last.ckpt`` (Lightning 2.6 writes one at the end of training, although it
      says checkpointing is off for ``fast_dev_run``).
    - Lightning's hook after every training step works out whether to save at some length; a step that is no
      multiple of ``every_n_train_steps`` (or any step, without it) and no ``train_time_interval`` returns at once.
    - A run named by the environment (a requeued SLURM job, a sweep's trial: see :mod:`litpoly.runs`) goes on in
      its own folder, where its checkpoints are: Lightning's note that the folder is not empty is not printed
      there. It stands for a folder given as ``dirpath``.

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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        with warnings.catch_warnings():
            if self.dirpath is None and run_name() is not None:  # the run's own folder (no dirpath given)
                warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Lightning's own hook saves here only on these steps, or once the time interval has passed (its own
        # settings, read, not copied: they stay whatever ModelCheckpoint makes of them).
        every, interval = compat.checkpoint_schedule(self)
        if interval is None and (every < 1 or trainer.global_step % every):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @cached_property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2.6 says fast_dev_run disables checkpointing, then writes last.ckpt here anyway (into the
        # working folder, as a fast_dev_run has no logger).
        if not getattr(trainer, "fast_dev_run", False):
            super().on_train_end(trainer, pl_module)


@contextmanager
def refusing_unlogged(trainer: L.Trainer, monitor: str | None) -> Iterator[None]:
    """Turn Lightning's traceback for a monitored metric the model never logs (``ModelCheckpoint``'s
    ``MisconfigurationException``, ``EarlyStopping``'s ``RuntimeError``, raised at the first check) into a
    one-line :class:`~litpoly.errors.SettingError` naming ``best.monitor`` and the metrics that are logged."""
    try:
        yield
    except (MisconfigurationException, RuntimeError) as error:
        if monitor is None or monitor in trainer.callback_metrics:
            raise
        raise _unlogged(trainer, monitor) from error


def _unlogged(trainer: L.Trainer, monitor: str) -> SettingError:
    logged = ", ".join(sorted(trainer.callback_metrics)) or "none yet"
    return SettingError(f"Expected `best.monitor` to name a metric the model logs ({logged}), got {monitor!r}")


def require_logged(trainer: L.Trainer, monitor: str | None) -> None:
    """At the end of a validation (the sanity check's included), refuse a ``monitor`` the model did not log:
    before any checkpoint is written (Lightning itself finds out only when it first tries to rank one)."""
    if monitor is not None and monitor not in trainer.callback_metrics:
        raise _unlogged(trainer, monitor)


class BestCheckpoint(PeriodicCheckpoint):
    """The checkpoint of the best model so far (:class:`BestSettings`); an unlogged ``monitor`` is one line, at the
    first validation."""

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with refusing_unlogged(trainer, self.monitor):
            super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        require_logged(trainer, self.monitor)
        with refusing_unlogged(trainer, self.monitor):
            super().on_validation_end(trainer, pl_module)


class StopWhenNotImproving(EarlyStopping):
    """Lightning's ``EarlyStopping`` (:class:`EarlyStoppingSettings`); an unlogged ``monitor`` is one line."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with refusing_unlogged(trainer, self.monitor):
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with refusing_unlogged(trainer, self.monitor):
            super().on_train_epoch_end(trainer, pl_module)


class BestSettings:
    """Keep the best model so far as ``checkpoints/best.ckpt``, by a metric the model logs.

    ``--ckpt_path best`` then means the newest run's ``best.ckpt``, and ``--early_stopping.patience`` stops a
    run when this metric stops improving.

    Args:
        monitor: The logged metric that ranks models, e.g. ``val/loss``; ``None``: no best checkpoint.
        mode: ``min`` (lower is better) or ``max``.
    """

    def __init__(self, monitor: str | None = None, mode: Literal["min", "max"] = "min") -> None:
        self.monitor = monitor
        self.mode = mode

    def callback(self) -> ModelCheckpoint | None:
        """The ``ModelCheckpoint`` that keeps ``best.ckpt`` (``None`` without a ``monitor``): a
        :class:`BestCheckpoint`, for :class:`PeriodicCheckpoint`'s cheaper hooks."""
        if self.monitor is None:
            return None
        return BestCheckpoint(
            monitor=self.monitor, mode=self.mode, filename="best", save_top_k=1, enable_version_counter=False
        )


class EarlyStoppingSettings:
    """Stop a run once the best checkpoint's metric (``--best.monitor``) has not improved for a while.

    Args:
        patience: Validations without improvement after which the run stops; ``None``: never.
        min_delta: The least change that counts as an improvement.
        monitor: The metric to watch; on the command line it is ``--best.monitor``'s (``link_arguments``).
        mode: ``min`` or ``max``; on the command line ``--best.mode``'s.
    """

    def __init__(
        self, patience: int | None = None, min_delta: float = 0.0, monitor: str | None = None,
        mode: Literal["min", "max"] = "min",
    ) -> None:  # fmt: skip
        if patience is not None and patience < 1:
            raise ValueError(f"Expected `early_stopping.patience` >= 1 (or null: never stop early), got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.monitor = monitor
        self.mode = mode

    def callback(self) -> EarlyStopping | None:
        """The ``EarlyStopping`` on the best checkpoint's metric, checked after each validation (``None`` without a
        patience).

        Raises:
            SettingError: A patience is set, but no metric to watch (``best.monitor``).
        """
        if self.patience is None:
            return None
        if self.monitor is None:
            raise SettingError(
                "Expected `best.monitor` to name a logged metric: `early_stopping.patience` stops on the metric "
                "the best checkpoint ranks models by"
            )
        return StopWhenNotImproving(
            monitor=self.monitor, mode=self.mode, patience=self.patience, min_delta=self.min_delta, verbose=True,
            check_on_train_epoch_end=False,  # after each validation: a run counting steps may have one long epoch
        )  # fmt: skip
