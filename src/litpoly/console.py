"""What a run prints: where its files go, the training loss every few steps, and a progress bar that costs little.

These work for any LightningModule: the loss is what ``training_step`` returns (a tensor, or a dict with
``loss``), as Lightning itself reads it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from tqdm import tqdm

from litpoly.errors import SettingError


@rank_zero_only
def say(message: object, stderr: bool = False) -> None:
    """Print one line from rank 0 (to stdout, or stderr for warnings), above any live tqdm progress bar.

    Not ``LightningModule.print``: Lightning drops that line when no bar is active (e.g. at fit start).
    """
    tqdm.write(str(message), file=sys.stderr if stderr else sys.stdout)


def without_password(url: str) -> str:
    """``url`` without the user and password before its ``@`` (a storage or tracking URL, to print or to save).

    Example:
        >>> without_password("postgresql://sweeper:secret@127.0.0.1/db"), without_password("sqlite:///study.db")
        ('postgresql://…@127.0.0.1/db', 'sqlite:///study.db')
    """
    head, sep, tail = url.rpartition("@")
    return url if not sep else head.split("://")[0] + "://…@" + tail


def step_loss(outputs: Any) -> Tensor | None:
    """The loss of a training step, read as Lightning reads ``training_step``'s return value.

    Example:
        >>> step_loss({"loss": torch.tensor(2.0), "other": 1}), step_loss(torch.tensor(3.0)), step_loss(None)
        (tensor(2.), tensor(3.), None)
    """
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, Tensor) else None


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


class LineProgress(ProgressBar):
    """The progress bar for a log file: a plain line every ``interval`` seconds of training, and one at the end.

    A terminal redraws tqdm's bar in place; a file or a pipe (``> train.log``, ``| tee``, ``#SBATCH --output``)
    keeps every frame, with carriage returns between them, and the messages printed meanwhile stick to the
    last frame. This prints whole lines instead, with the bar's numbers::

        Epoch 0, step 1200/2400, 1180 it/s: v_num=0, train/loss=8.930

    Args:
        interval: Seconds between two lines during training.
    """

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self.interval = interval
        self._enabled = True
        self._started = 0.0
        self._next_line = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.monotonic()
        self._next_line = self._started + self.interval

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._enabled and time.monotonic() >= self._next_line:
            self._line(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            self._line(trainer, pl_module)

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        self._next_line = now + self.interval
        rate = trainer.global_step / max(now - self._started, 1e-9)
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in self.get_metrics(trainer, pl_module).items())  # fmt: skip
        total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        say(f"Epoch {trainer.current_epoch}, step {trainer.global_step}{total}, {rate:.4g} it/s: {metrics}")

    def _evaluated(self, trainer: L.Trainer, what: str) -> None:
        if self._enabled and trainer.state.fn != "fit":
            say(f"{what}: done")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluated(trainer, "Validation")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluated(trainer, "Test")

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluated(trainer, "Prediction")


class TimedProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, redrawn at most every ``min_interval`` seconds during training.

    A drop-in for ``TQDMProgressBar``: the same bar, drawn less often. A redraw (format the bar, gather the
    metrics, write to the terminal) costs more than a whole training step of a small model, and Lightning's
    ``refresh_rate`` counts steps: no count suits every run, since a step may take microseconds or seconds.
    The eye needs a redraw every tenth of a second or so, whatever the step costs; this bar redraws then,
    and always at the last step.

    During ``fit`` it shows no bar for the validations inside training (each would flash by in a moment, at
    the cost of a redraw); ``validate`` and ``test`` keep theirs.

    Args:
        min_interval: Seconds between two redraws of the training bar.
    """

    def __init__(self, min_interval: float = 0.1) -> None:
        super().__init__(refresh_rate=1)
        self.min_interval = min_interval
        self._next_redraw = 0.0
        self._no_bar: Tqdm | None = None  # made once, when first needed: even a disabled tqdm is not free

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        last = 0 < trainer.max_steps <= trainer.global_step or batch_idx + 1 >= trainer.num_training_batches
        if now >= self._next_redraw or last:
            self._next_redraw = now + self.min_interval
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def init_validation_tqdm(self) -> Tqdm:
        if self.trainer.state.fn == "fit":
            if self._no_bar is None:  # (not in __init__: a bar pickled for ddp_spawn loses its tqdm objects)
                self._no_bar = Tqdm(disable=True)
            return self._no_bar
        return super().init_validation_tqdm()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            # No validation bar to close, and no reason to redraw the training bar now: the next timed redraw
            # shows the new metrics.
            self.reset_dataloader_idx_tracker()
            return
        super().on_validation_end(trainer, pl_module)
