"""Callbacks that give a run the seed notebook's console output, a cheap progress bar, and write predictions."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import PositiveInt
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities import rank_zero_only
from tqdm import tqdm

from litpoly.model import PolynomialRegressor, format_polynomial


@rank_zero_only
def say(message: object, stderr: bool = False) -> None:
    """Print one line from rank 0 (to stdout, or stderr for warnings), above any live tqdm progress bar.

    Not ``LightningModule.print``: Lightning drops that line when no bar is active (e.g. at fit start).
    """
    tqdm.write(str(message), file=sys.stderr if stderr else sys.stdout)


class SeedReport(L.Callback):
    """Prints what the seed notebook printed, plus the run folder so the user knows where to look.

    That is ``step loss`` every ``every_n_steps`` and, at the end, ``Result: y = a + b x + c x^2 + d x^3``.

    The lines scroll above the progress bar instead of breaking it. Reading the loss costs one device
    sync per report, not one per step.

    Args:
        every_n_steps: Print the training loss after every this many optimizer steps (the seed: 100).
            The printed step is 0-based like the seed's ``t``, so the first line is ``99 <loss>``.
    """

    def __init__(self, every_n_steps: PositiveInt = 100) -> None:
        self.every_n_steps = every_n_steps

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Every subcommand (fit, validate, test, predict) is a run with its own folder: say which.
        if trainer.log_dir is not None and trainer.loggers:
            say(f"Run folder: {trainer.log_dir} (seed {torch.initial_seed()})")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # `global_step` has already counted this step; the seed prints the loss *before* the update at t.
        if trainer.global_step % self.every_n_steps == 0 and isinstance(outputs, dict):
            # Each process holds its shard's sum of squared errors; the seed's loss is their total.
            total = trainer.strategy.reduce(outputs["sse"], reduce_op="sum")
            say(f"{trainer.global_step - 1} {total.item()}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(pl_module, PolynomialRegressor):
            say(f"Result: {format_polynomial(list(pl_module.coefficient_dict().values()))}")


class TimedProgressBar(TQDMProgressBar):
    """Lightning's tqdm progress bar, redrawn at most every ``min_interval`` seconds during training.

    A redraw (format the bar, gather the metrics, write to the terminal) costs ~0.3 ms here, five raw
    2000-point steps. Lightning's ``refresh_rate`` counts steps, and no step count suits every run: 20 steps
    are 8 ms at 2000 points and 2 s at 20 million. The eye needs a redraw every tenth of a second or so,
    whatever the step costs; this bar redraws then, and always at the last step.

    During ``fit`` it shows no bar for validation: that is one batch every 100 steps, and its bar would
    flash for a millisecond at the cost of ~0.3 ms (``validate`` keeps its bar).

    Args:
        min_interval: Seconds between two redraws of the training bar.
    """

    def __init__(self, min_interval: float = 0.1) -> None:
        super().__init__(refresh_rate=1)
        self.min_interval = min_interval
        self._next_redraw = 0.0
        self._no_bar: Tqdm | None = None  # made once, when first needed: even a disabled tqdm takes ~60 µs

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
            # No validation bar to close, and no reason to redraw the training bar now: its metrics are
            # the training loss, which validation does not change. The next timed redraw shows it.
            self.reset_dataloader_idx_tracker()
            return
        super().on_validation_end(trainer, pl_module)


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict``'s output into the run folder: ``predictions.csv`` (columns ``x,target,prediction``)
    and ``predictions.png`` (the prediction against the target).

    Args:
        filename: Name of the CSV file inside the run folder; the figure takes the same name with ``.png``.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        predictions: Any,
        batch_indices: Any,
    ) -> None:
        if not trainer.is_global_zero:
            return
        columns = ("x", "target", "prediction")
        table = torch.stack(
            [torch.cat([batch[c].detach().double().cpu() for batch in predictions]) for c in columns], dim=1
        )
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.filename
        np.savetxt(path, table.numpy(), delimiter=",", header=",".join(columns), comments="", fmt="%.17g")
        figure = path.with_suffix(".png")
        plot_predictions(table.numpy(), figure)
        say(f"Predictions for {table.shape[0]} points written to {path} (figure: {figure})")


def plot_predictions(table: np.ndarray, path: Path) -> None:
    """Save the prediction against the target (columns x, target, prediction of ``table``) as a PNG."""
    import matplotlib  # imported here: only `predict` needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, target, prediction = table.T
    fig, (ax, ax_err) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, height_ratios=(3, 1))
    ax.plot(x, target, "k--", lw=1.5, label="target")
    ax.plot(x, prediction, color="C3", lw=2, label="prediction")
    ax.set(ylabel="y", title=f"Prediction on {len(x)} points")
    ax.legend()
    ax_err.plot(x, prediction - target, color="C0")
    ax_err.set(xlabel="x", ylabel="error")
    for a in (ax, ax_err):
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
