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

from litpoly import signals
from litpoly.console import say, step_loss
from litpoly.errors import SettingError


class ConsoleReport(L.Callback):
    """Prints the run folder and seed when a run starts, and the training loss every ``every_n_steps`` steps.

    The loss lines are the seed notebook's ``print(t, loss.item())``: ``99 204.84…`` (0-based step, loss
    before that step's update). Under DDP the loss printed is the mean of the processes' losses, which is
    the one-process loss whenever the DDP rule of :class:`~litpoly.data.StepLoader` holds. Reading the loss
    costs one device sync per line, not one per step.

    A run that fails on a bad combination of settings (:class:`~litpoly.errors.SettingError`, found during setup or
    at the first validation) before it wrote a checkpoint leaves no run folder behind.

    Args:
        every_n_steps: Print the training loss after every this many optimizer steps.
    """

    def __init__(self, every_n_steps: PositiveInt = 100) -> None:
        self.every_n_steps = every_n_steps
        self._announced = False
        self._printed = 0  # the step whose line was printed last
        self._finished = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._announced, self._printed = False, 0

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
        # `global_step` has already counted this step; the seed prints the loss *before* the update at t. With
        # `accumulate_grad_batches` this hook runs for every micro-batch: a step's line is printed at the batch
        # that made the step, not again at the next micro-batch, and none before the first step.
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or step == self._printed:
            return
        self._printed = step
        loss = step_loss(outputs)
        if loss is not None:
            # Lightning divides the loss it hands the hooks by accumulate_grad_batches (for the backward pass).
            loss = loss.detach() * trainer.accumulate_grad_batches
            say(f"{trainer.global_step - 1} {trainer.strategy.reduce(loss, reduce_op='mean').item()}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finished = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # After every callback's `on_fit_end` (the example's own report included), and only for a fit that ended
        # by its schedule or early stopping: a signal or a diverged run says its own line instead.
        if stage == "fit" and self._finished and not getattr(trainer, "fast_dev_run", False):
            for line in fit_summary(trainer):
                say(line)
        self._finished = False

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A setting found wrong during setup, or a signal before the first step: the run folder holds nothing yet.
        if not isinstance(exception, SettingError | signals.Stop):
            return
        if isinstance(exception, signals.Stop) and trainer.global_step > 0:
            return  # stopped after training: its logs and checkpoints are the run's
        exception.run_folder = run_folder_to_remove(trainer)


def run_folder_to_remove(trainer: L.Trainer) -> Path | None:
    """The run folder of a run that stopped before it saved anything, to remove once Lightning has closed the
    logger's files (by the command line); ``None`` on other processes than rank 0, or when it holds a checkpoint (a
    run that goes on in its own folder). The logger's own folder, not ``trainer.log_dir``: under DDP that is a
    collective, and the other processes are failing too."""
    if not trainer.is_global_zero:
        return None
    log_dir = getattr(trainer.logger, "log_dir", None)
    folder = Path(log_dir) if log_dir else None
    # (A folder not there yet is this run's: its logger makes it when Lightning closes it, after on_exception.)
    if folder is not None and not (folder.is_dir() and any(folder.rglob("*.ckpt"))):
        return folder  # made by this run's logger; it holds nothing worth keeping
    return None


def fit_summary(trainer: L.Trainer) -> list[str]:
    """What a finished ``fit`` ends with, for any model: its checkpoints (``last.ckpt`` and its step, the best one
    with its score) and the final value of every metric it logged.

    Example:
        >>> from types import SimpleNamespace
        >>> saver = SimpleNamespace(last_model_path="/r/checkpoints/last.ckpt", best_model_path="", monitor=None)
        >>> best = SimpleNamespace(last_model_path="", best_model_path="/r/checkpoints/best.ckpt", monitor="val/mse",
        ...                        best_model_score=torch.tensor(0.25))
        >>> trainer = SimpleNamespace(checkpoint_callbacks=[saver, best], global_step=100,
        ...                           callback_metrics={"val/mse": torch.tensor(0.3), "train/loss": torch.tensor(2.0)})
        >>> for line in fit_summary(trainer):
        ...     print(line)
        Checkpoints: /r/checkpoints/last.ckpt (step 100), best.ckpt (val/mse 0.25)
        Final metrics: train/loss 2, val/mse 0.3
    """
    saved = []
    callbacks = trainer.checkpoint_callbacks  # ModelCheckpoint's, read by name: any checkpoint callback may be there
    last = next((c.last_model_path for c in callbacks if getattr(c, "last_model_path", "")), "")  # type: ignore[attr-defined]
    if last:
        saved.append(f"{last} (step {trainer.global_step})")
    for callback in callbacks:
        path, score = getattr(callback, "best_model_path", ""), getattr(callback, "best_model_score", None)
        monitor = getattr(callback, "monitor", None)
        if path and monitor and score is not None:
            saved.append(f"{Path(path).name if last else path} ({monitor} {float(score):.6g})")
    lines = [f"Checkpoints: {', '.join(saved)}"] if saved else []
    metrics = {key: value for key, value in trainer.callback_metrics.items() if value.numel() == 1}
    if metrics:
        lines.append("Final metrics: " + ", ".join(f"{k} {float(v):.6g}" for k, v in sorted(metrics.items())))
    return lines
