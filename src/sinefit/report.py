"""What the sine example shows beyond any run's report: the best possible fit, the gap to it, and how it looks.

:class:`SineReport` is attached by :meth:`PolynomialRegressor.configure_callbacks
<sinefit.model.PolynomialRegressor.configure_callbacks>` wherever the model runs. It

- warns before training when SGD's lr is above its stability limit ``2/λmax(2XᵀX)`` on the training points;
- logs ``optimum/a`` … ``optimum/d`` and ``optimum/loss`` (the closed-form least-squares fit: the floor of
  every run), ``coef/a`` … at Lightning's logging cadence with ``train/gap_to_optimum`` (training loss minus
  the floor), and a custom-scalars layout (CUSTOM SCALARS tab) that draws each learned coefficient beside its
  closed-form value;
- logs ``fit``, an image of the fitted polynomial against the target and the training points, and
  ``equation``, the fitted equation as text, at each validation;
- prints the seed's ``Result: y = a + b x + c x^2 + d x^3`` line at the end of training, and logs
  ``final/loss`` and ``final/gap_to_optimum``;
- after ``predict``, draws ``predictions.png`` beside the run's ``predictions.csv``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger

from litpoly.console import say, step_loss
from litpoly.data.step_loader import StepLoader
from sinefit import reference
from sinefit.figures import BackgroundWriter, FitFigure, add_figure, plot_predictions
from sinefit.parity import sgd_stall_bound
from sinefit.polynomial import coefficient_names, format_polynomial, named_coefficients

#: The fit figure draws at most this many training points.
FIGURE_POINTS = 200


def trained_points(trainer: L.Trainer) -> tuple[np.ndarray, np.ndarray] | None:
    """All the points the run trains on, ``(x, y)``, in the dtype it trains in (under DDP too: the loader holds
    them all and shards each batch), as numpy arrays without a float64 copy of them all: the reference reads
    them in float64 chunk by chunk. ``None`` when the training loader is not a :class:`StepLoader` of ``(x, y)``."""
    loader = trainer.train_dataloader
    if not isinstance(loader, StepLoader) or len(loader.tensors) != 2:
        return None
    x, y = (t.detach() if t.dtype in (torch.float32, torch.float64) else t.detach().float() for t in loader.tensors)
    return x.cpu().numpy(), y.cpu().numpy()


class SineReport(L.Callback):
    """The example's own report: closed-form optimum, gap to it, fit figure, ``Result:`` line, SGD's limit.

    Args:
        coefficients: Reads the model's current coefficients, lowest power first (their number sets the degree).
        optimizer: The model's optimizer, ``sgd`` or ``rmsprop`` (SGD's limits are warned about).
        lr: The model's learning rate.
        figure: Draw the fit figure (and log the equation) at each validation.
    """

    def __init__(
        self, coefficients: Callable[[], torch.Tensor], optimizer: reference.Optimizer, lr: float, figure: bool = True
    ) -> None:
        self.coefficients = coefficients
        self.optimizer = optimizer
        self.lr = lr
        self.figure = figure
        self.optimum: np.ndarray | None = None
        self.floor = 0.0
        self._figure: FitFigure | None = None
        self._figure_data: tuple[np.ndarray, ...] = ()
        self._writer = BackgroundWriter()
        self._predictions: list[dict[str, torch.Tensor]] = []

    def _named_coefficients(self) -> dict[str, float]:
        return named_coefficients(self.coefficients().detach().cpu().tolist())

    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    # -- before training ------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        points = trained_points(trainer)
        if points is None:
            say("Note: the training loader is not a StepLoader of (x, y): no optimum, gap or fit figure.")
            return
        x, y = points
        degree = self.coefficients().numel() - 1
        self._warn_above_stability_limit(trainer, x, degree)
        # The floor of this run: the least-squares fit of the very points it trains on.
        self.optimum, self.floor = reference.closed_form(x, y, degree)
        self._warn_if_sgd_will_stall(x)
        every = max(1, len(x) // FIGURE_POINTS)
        grid = np.linspace(float(x[0]), float(x[-1]), 400)
        target = getattr(trainer.datamodule, "target", torch.sin)  # type: ignore[attr-defined]
        self._figure_data = (x[::every].astype(np.float64), y[::every].astype(np.float64), grid,
                             target(torch.from_numpy(grid)).numpy())  # fmt: skip
        self._log_optimum(trainer, step=trainer.global_step)
        tensorboard = self._tensorboard(trainer)
        if tensorboard is not None and trainer.is_global_zero:
            names = coefficient_names(degree)
            tensorboard.experiment.add_custom_scalars(
                {
                    "Coefficients vs closed form": {n: ["Multiline", [f"coef/{n}", f"optimum/{n}"]] for n in names},
                    "Loss": {
                        "training loss vs floor": ["Multiline", ["train/loss", "optimum/loss"]],
                        "gap to optimum": ["Multiline", ["train/gap_to_optimum"]],
                    },
                }
            )

    def _warn_above_stability_limit(self, trainer: L.Trainer, x: np.ndarray, degree: int) -> None:
        if self.optimizer != "sgd" or getattr(trainer.datamodule, "batch_size", None) is not None:  # type: ignore[attr-defined]
            return  # mini-batch SGD: each step sees a different, smaller sum
        limit = reference.sgd_stability_limit(x, degree)
        if self.lr >= limit:
            say(
                f"Warning: SGD lr {self.lr:g} is above the stability limit 2/λmax(2XᵀX) = {limit:.3g} "
                "for these points: the loss will grow every step.",
                stderr=True,
            )

    def _warn_if_sgd_will_stall(self, x: np.ndarray) -> None:
        """Before training: how far from the optimum SGD stops in the weights' dtype (its updates round away
        there, see :func:`~sinefit.parity.sgd_stall_bound`); said when that is more than 1% of the optimum."""
        assert self.optimum is not None
        if self.optimizer != "sgd":
            return
        weights = self.coefficients().dtype  # in the run's precision by now
        stall = sgd_stall_bound(x, self.optimum, self.lr, weights)
        if stall > 0.01 * np.abs(self.optimum).max():
            dtype = str(weights).removeprefix("torch.")
            say(
                f"Warning: in {dtype} at lr {self.lr:g}, SGD stops moving up to {stall:.2g} from the optimum (its "
                f"updates round away there): this run cannot fit well. Use a wider precision (32-true, "
                "bf16-mixed) or a larger lr.",
                stderr=True,
            )

    def _log_optimum(self, trainer: L.Trainer, step: int) -> None:
        assert self.optimum is not None
        names = coefficient_names(len(self.optimum) - 1)
        metrics = {f"optimum/{n}": float(v) for n, v in zip(names, self.optimum, strict=True)}
        metrics["optimum/loss"] = self.floor
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    # -- during training ------------------------------------------------------------------------------
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # On the steps and with the step index that Lightning uses for the model's `train/loss`.
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]
        loss = step_loss(outputs)
        if self.optimum is None or every <= 0 or trainer.global_step % every or loss is None:
            return
        total = float(trainer.strategy.reduce(loss.detach(), reduce_op="mean"))  # the sum over all points
        # Straight to the loggers in one call: `self.log` costs far more per value.
        metrics = {f"coef/{name}": value for name, value in self._named_coefficients().items()}
        metrics["train/gap_to_optimum"] = total - self.floor
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = self._tensorboard(trainer)
        if not self.figure or tensorboard is None or trainer.sanity_checking or not self._figure_data:
            return
        if not trainer.is_global_zero:
            return
        if self._figure is None:
            self._figure = FitFigure(*self._figure_data)
        coefficients = self.coefficients().detach().cpu().tolist()
        image, step, experiment = self._figure.render(coefficients), trainer.global_step, tensorboard.experiment
        self._writer.submit(add_figure, experiment, "fit", image, step)
        self._writer.submit(experiment.add_text, "equation", format_polynomial(coefficients), step)

    # -- at the end -----------------------------------------------------------------------------------
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._writer.close()
        coefficients = self._named_coefficients()
        say(f"Result: {format_polynomial(list(coefficients.values()))}")
        loader = trainer.train_dataloader
        if self.optimum is None or not isinstance(loader, StepLoader):
            return
        x, y = loader.tensors  # all the training points, on the device: for a full batch, the powers are reused
        with torch.no_grad():
            final_loss = float(F.mse_loss(pl_module(x), y, reduction="sum"))
        self._log_optimum(trainer, step=trainer.global_step)
        # The coefficient curves end on the values of the `Result:` line, at the final step.
        final = {f"coef/{name}": value for name, value in coefficients.items()}
        final.update({"final/loss": final_loss, "final/gap_to_optimum": final_loss - self.floor})
        for logger in trainer.loggers:
            logger.log_metrics(final, step=trainer.global_step)
        self._figure, self._figure_data = None, ()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._writer.close()

    # -- predict ----------------------------------------------------------------------------------------
    def on_predict_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int, *_: Any
    ) -> None:
        self._predictions.append(outputs)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        predictions, self._predictions = self._predictions, []
        if not trainer.is_global_zero or not predictions or trainer.log_dir is None:
            return
        x, target, prediction = (
            torch.cat([p[key] for p in predictions]).detach().double().cpu().numpy()
            for key in ("x", "target", "prediction")
        )
        path = Path(trainer.log_dir) / "predictions.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_predictions(x, target, prediction, path)
        say(f"Figure of the predictions: {path}")
