"""Progress bars that cost little: :class:`TimedProgressBar` on a terminal, :class:`LineProgress` in a file or a
pipe."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from litpoly import compat
from litpoly.console import say


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
            self._line(trainer, pl_module, trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._enabled:
            # Lightning counts the last epoch completed before this hook, also when max_steps ended it early: the
            # line names the epoch the last step was in, as the lines during training do.
            self._line(trainer, pl_module, max(trainer.current_epoch - 1, 0))

    def _line(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        now = time.monotonic()
        self._next_line = now + self.interval
        rate = trainer.global_step / max(now - self._started, 1e-9)
        metrics = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in self.get_metrics(trainer, pl_module).items())  # fmt: skip
        total = f"/{trainer.max_steps}" if trainer.max_steps > 0 else ""
        say(f"Epoch {epoch}, step {trainer.global_step}{total}, {rate:.4g} it/s: {metrics}")

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
        self._no_bar: compat.Tqdm | None = None  # made once, when first needed: even a disabled tqdm is not free

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        last = 0 < trainer.max_steps <= trainer.global_step or batch_idx + 1 >= trainer.num_training_batches
        if now >= self._next_redraw or last:
            self._next_redraw = now + self.min_interval
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def init_validation_tqdm(self) -> compat.Tqdm:
        if self.trainer.state.fn == "fit":
            if self._no_bar is None:  # (not in __init__: a bar pickled for ddp_spawn loses its tqdm objects)
                self._no_bar = compat.Tqdm(disable=True)
            return self._no_bar
        return super().init_validation_tqdm()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            # No validation bar to close, and no reason to redraw the training bar now: the next timed redraw
            # shows the new metrics.
            self.reset_dataloader_idx_tracker()
            return
        super().on_validation_end(trainer, pl_module)
