"""What a run prints: where its files go, its seed, and the training loss every few steps.

It works for any LightningModule: the loss is what ``training_step`` returns (a tensor, or a dict with
``loss``), as Lightning itself reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import PositiveInt

from litpoly.console import say, step_loss
from litpoly.errors import SettingError


class ConsoleReport(L.Callback):
    """Prints the run folder and seed when a run starts, and the training loss every ``every_n_steps`` steps.

    The loss lines are the seed notebook's ``print(t, loss.item())``: ``99 204.84…`` (0-based step, loss
    before that step's update). Under DDP the loss printed is the mean of the processes' losses, which is
    the one-process loss whenever the DDP rule of :class:`~litpoly.loader.StepLoader` holds. Reading the loss
    costs one device sync per line, not one per step.

    A run that fails on a bad combination of settings (:class:`~litpoly.errors.SettingError`, found during setup or
    at the first validation) before it wrote a checkpoint leaves no run folder behind.

    Args:
        every_n_steps: Print the training loss after every this many optimizer steps.
    """

    def __init__(self, every_n_steps: PositiveInt = 100) -> None:
        self.every_n_steps = every_n_steps
        self._announced = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._announced = False

    def _announce(self, trainer: L.Trainer) -> None:
        # Once the data is loaded and every setup hook has run, so that a run refused during setup prints one
        # line, its error, and no run folder that is then removed.
        if not self._announced and trainer.log_dir is not None and not getattr(trainer, "fast_dev_run", False):
            device = trainer.strategy.root_device.type
            where = device if trainer.world_size == 1 else f"{trainer.world_size} processes on {device}"
            say(f"Run folder: {trainer.log_dir} (seed {torch.initial_seed()}, {trainer.precision} on {where})")
        self._announced = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._announce(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":  # in fit, the sanity check runs before the training data is loaded
            self._announce(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._announce(trainer)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._announce(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # `global_step` has already counted this step; the seed prints the loss *before* the update at t.
        if trainer.global_step % self.every_n_steps:
            return
        loss = step_loss(outputs)
        if loss is not None:
            say(f"{trainer.global_step - 1} {trainer.strategy.reduce(loss.detach(), reduce_op='mean').item()}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SettingError) and trainer.is_global_zero:
            # The logger's own folder, not `trainer.log_dir`: under DDP that is a collective, and the other
            # processes are failing too. Removed by the command line once Lightning has closed the logger's files.
            log_dir = getattr(trainer.logger, "log_dir", None)
            folder = Path(log_dir) if log_dir else None
            if folder is not None and folder.is_dir() and not any(folder.rglob("*.ckpt")):
                exception.run_folder = folder  # made by this run's logger; it holds nothing worth keeping
