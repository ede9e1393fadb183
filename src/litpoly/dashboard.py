"""What a run shows in TensorBoard beyond Lightning's own scalars.

:class:`TensorBoardReport` adds, for every ``fit``:

- ``coef/a`` … ``coef/d`` (after each logged step), ``train/gap_to_optimum`` (training loss minus the
  closed-form floor) and ``train/lr``, at the model's logging cadence, in one call to the loggers;
- ``optimum/a`` … ``optimum/d`` and ``optimum/loss``, and a custom-scalars layout (CUSTOM SCALARS
  tab) that draws each learned coefficient beside its closed-form value on one chart;
- ``fit``: an image of the fitted polynomial against the target and the training points, and
  ``equation``: the fitted equation as text, both at each validation;
- the HPARAMS tab: optimizer, effective lr, degree, data, seed, precision, steps — and the final
  loss and gap to the optimum as its metrics, so SGD and RMSprop runs line up side by side;
- ``config``: the run's resolved ``config.yaml`` as text.

``train/lr`` is what Lightning's ``LearningRateMonitor`` would log, without one more callback whose
hooks Lightning would call on every step.

:class:`ThrottledTensorBoardLogger` is the run's logger: Lightning's ``TensorBoardLogger``, flushed to disk
every ``flush_secs`` seconds rather than after every logging call.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from litpoly import reference
from litpoly.data import SineDataModule, StepLoader
from litpoly.model import PolynomialRegressor, coefficient_names, format_polynomial

#: The HPARAMS tab's metric columns.
FINAL_METRICS = ("final/loss", "final/gap_to_optimum")


class ThrottledTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger``, flushing its event file at most every ``flush_secs`` seconds.

    Lightning calls the logger's ``save()`` after every ``log_metrics``: every ``log_every_n_steps`` steps
    and after every validation. For TensorBoard that is a flush, which waits for the writer thread to empty
    its queue: about 1 ms, 15 raw 2000-point steps, ~30 µs on every step of the default run. Here ``save()``
    flushes only when ``flush_secs`` have passed since the last flush; TensorBoard's writer thread also
    flushes on its own every ``flush_secs``, and ``finalize`` (end of run, also after an exception or an
    interruption) flushes the rest. So nothing is lost, and a live TensorBoard lags the run by at most
    ``flush_secs`` — except that a process killed outright (SIGKILL, out of memory) loses its last
    ``flush_secs`` of scalars and images, where Lightning's logger would lose the events since its last log call.

    Every other argument is ``TensorBoardLogger``'s. litpoly uses this logger wherever Lightning would
    use its default one; ``--trainer.logger`` picks another.
    """

    def __init__(self, *args: Any, flush_secs: float = 2.0, **kwargs: Any) -> None:
        super().__init__(*args, flush_secs=flush_secs, **kwargs)  # flush_secs also goes to the SummaryWriter
        self.flush_secs = flush_secs
        self._last_flush = -math.inf

    @rank_zero_only
    def save(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self.flush_secs:
            self._last_flush = now
            super().save()


class FitFigure:
    """A reusable matplotlib figure of the fitted curve against the target, cheap to redraw.

    The axes, the target curve and the training points are drawn once; each update redraws only the
    fitted line on a saved background (blitting), so a validation costs ~1 ms here instead of the
    ~20 ms of a full matplotlib render.

    Args:
        x: A sample of the training inputs (a few hundred are plenty).
        y: Their targets.
        grid: Where to draw the curves.
        target: The target function on ``grid``.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, grid: np.ndarray, target: np.ndarray) -> None:
        import matplotlib  # imported here: only runs that draw figures pay for it

        matplotlib.use("Agg")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.grid = grid
        figure = Figure(figsize=(5, 3.2), dpi=80)
        self.canvas = FigureCanvasAgg(figure)
        ax = figure.add_subplot()
        ax.plot(x, y, ".", ms=3, color="0.6", label="training points")
        ax.plot(grid, target, "k--", lw=1.2, label="target")
        (self.line,) = ax.plot(self.grid, np.zeros_like(self.grid), color="C3", lw=2, label="fit", animated=True)
        margin = 0.25 * (y.max() - y.min() + 1e-12)
        ax.set(xlim=(x.min(), x.max()), ylim=(y.min() - margin, y.max() + margin), xlabel="x", ylabel="y")
        ax.legend(loc="upper left", fontsize=7)
        ax.grid(alpha=0.3)
        figure.tight_layout()
        self.canvas.draw()  # type: ignore[no-untyped-call]
        self.background = self.canvas.copy_from_bbox(figure.bbox)  # type: ignore[no-untyped-call]
        self.ax, self.figure = ax, figure

    def render(self, coefficients: list[float]) -> np.ndarray:
        """The figure with the polynomial ``coefficients`` drawn, as an ``(H, W, 3)`` uint8 image."""
        self.line.set_ydata(np.polynomial.polynomial.polyval(self.grid, coefficients))
        self.canvas.restore_region(self.background)  # type: ignore[no-untyped-call]
        self.ax.draw_artist(self.line)
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()  # type: ignore[no-untyped-call]


class TensorBoardReport(L.Callback):
    """Logs the optimum, the gap to it, the fit figure, the equation, hyperparameters and config.

    Does nothing without a :class:`~lightning.pytorch.loggers.TensorBoardLogger`.

    Args:
        figure: Log the fit figure and the equation at each validation.
        max_figure_points: At most this many training points are drawn in the figure.
    """

    def __init__(self, figure: bool = True, max_figure_points: PositiveInt = 200) -> None:
        self.figure = figure
        self.max_figure_points = max_figure_points
        self.optimum: np.ndarray | None = None
        self.floor = 0.0
        self._figure: FitFigure | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self._figure_data: tuple[np.ndarray, ...] = ()
        self._data: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._tensorboard(trainer)
        loader, datamodule = trainer.train_dataloader, getattr(trainer, "datamodule", None)
        if logger is None or not isinstance(pl_module, PolynomialRegressor) or not isinstance(loader, StepLoader):
            return
        if not isinstance(datamodule, SineDataModule):
            return
        self._data = (loader.x, loader.y)  # this process's points, as trained on
        # The floor and the figure use all points, exact in float64 (under DDP a process holds a shard).
        x64 = datamodule.train_x
        x, y = x64.numpy(), datamodule.target(x64).numpy()
        self.optimum, self.floor = reference.closed_form(x, y, pl_module.degree)
        every = max(1, len(x) // self.max_figure_points)
        grid = np.linspace(x[0], x[-1], 400)
        self._figure_data = (
            x[::every].copy(),
            y[::every].copy(),
            grid,
            datamodule.target(torch.from_numpy(grid)).numpy(),
        )
        self._log_optimum(trainer, step=trainer.global_step)
        names = coefficient_names(pl_module.degree)
        layout = {
            "Coefficients vs closed form": {n: ["Multiline", [f"coef/{n}", f"optimum/{n}"]] for n in names},
            "Loss": {
                "training loss vs floor": ["Multiline", ["train/loss", "optimum/loss"]],
                "gap to optimum": ["Multiline", ["train/gap_to_optimum"]],
            },
        }
        if trainer.is_global_zero:
            logger.experiment.add_custom_scalars(layout)
            config = Path(logger.log_dir) / "config.yaml"
            if config.is_file():  # written by LightningCLI's SaveConfigCallback just before
                text = "\n".join("    " + line for line in config.read_text().splitlines())  # markdown code block
                logger.experiment.add_text("config", text, global_step=0)
        logger.log_hyperparams(self._hparams(trainer, pl_module), metrics=dict.fromkeys(FINAL_METRICS, float("nan")))

    def _log_optimum(self, trainer: L.Trainer, step: int) -> None:
        assert self.optimum is not None
        names = coefficient_names(len(self.optimum) - 1)
        metrics = {f"optimum/{n}": float(v) for n, v in zip(names, self.optimum, strict=True)}
        metrics["optimum/loss"] = self.floor
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    @staticmethod
    def _hparams(trainer: L.Trainer, pl_module: PolynomialRegressor) -> dict[str, Any]:
        datamodule = getattr(trainer, "datamodule", None)
        data = dict(datamodule.hparams) if datamodule is not None else {}
        return {
            "optimizer": pl_module.optimizer_name,
            "lr": pl_module.lr,
            "degree": pl_module.degree,
            "init": "given" if pl_module.hparams.get("init_coefficients") else "random",
            "init_coefficients": str(pl_module.initial_coefficients.tolist()),
            "num_samples": data.get("num_samples"),
            "x_min": data.get("x_min"),
            "x_max": data.get("x_max"),
            "batch_size": data.get("batch_size") or "full",
            "seed": torch.initial_seed(),
            "precision": str(trainer.precision),
            "max_steps": trainer.max_steps,
            "devices": trainer.world_size,
        }

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Same cadence and step as the model's `train/loss` (see PolynomialRegressor.training_step).
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]
        if self.optimum is None or every <= 0 or trainer.global_step % every or not isinstance(outputs, dict):
            return
        assert isinstance(pl_module, PolynomialRegressor)
        total = trainer.strategy.reduce(outputs["sse"], reduce_op="sum")  # all processes' shards
        # Straight to the loggers in one call: `self.log` would cost ~0.3 ms per value.
        metrics = {f"coef/{name}": value for name, value in pl_module.coefficient_dict().items()}
        metrics["train/gap_to_optimum"] = float(total) - self.floor
        metrics["train/lr"] = trainer.optimizers[0].param_groups[0]["lr"]  # what LearningRateMonitor logs
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = self._tensorboard(trainer)
        if not self.figure or logger is None or trainer.sanity_checking or not self._figure_data:
            return
        if not trainer.is_global_zero or not isinstance(pl_module, PolynomialRegressor):
            return
        if self._figure is None:
            self._figure = FitFigure(*self._figure_data)
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="litpoly-figure")
        coefficients = list(pl_module.coefficient_dict().values())
        image, step, experiment = self._figure.render(coefficients), trainer.global_step, logger.experiment
        # Encoding the PNG takes ~5 ms, longer than 10 training steps here; zlib releases the GIL, so a
        # worker thread does it on the other core while training goes on. One worker keeps the order.
        assert self._writer is not None
        self._pending.append(self._writer.submit(experiment.add_image, "fit", image, step, dataformats="HWC"))
        self._pending.append(
            self._writer.submit(experiment.add_text, "equation", format_polynomial(coefficients), step)
        )

    def _finish_figures(self) -> None:
        """Wait for the worker and re-raise anything that failed in it."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._finish_figures()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_figures()
        if self.optimum is None or self._data is None or not isinstance(pl_module, PolynomialRegressor):
            return
        x, y = self._data
        with torch.no_grad():
            shard_loss = F.mse_loss(pl_module(x), y, reduction="sum")
        final_loss = float(trainer.strategy.reduce(shard_loss, reduce_op="sum"))
        self._log_optimum(trainer, step=trainer.global_step)
        # The coefficient curves end on the values of the `Result:` line, at the final step.
        final = {f"coef/{name}": value for name, value in pl_module.coefficient_dict().items()}
        final.update({"final/loss": final_loss, "final/gap_to_optimum": final_loss - self.floor})
        for logger in trainer.loggers:
            logger.log_metrics(final, step=trainer.global_step)
        self._figure, self._figure_data, self._data = None, (), None
