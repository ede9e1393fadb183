"""The parity check's callback: records a Lightning run cheaply during ``fit``, then replays it with the numpy
reference and prints whether they agree (the comparison and its tolerances: :mod:`sinefit.parity`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import PositiveInt

from litpoly.console import say, step_loss
from sinefit import reference
from sinefit.parity import EARLY_STEPS, ParityReport, Tolerance, compare


class ParityCheck(L.Callback):
    """After ``fit``, replays the run with the numpy reference and prints a side-by-side table and a verdict.

    Records the loss and the coefficients at every step (tensors kept on the device, read once at the end:
    no per-step sync), then runs :func:`sinefit.reference.run` from the run's own start, data, optimizer, lr
    and number of steps, and compares every step. The table (a row every ``every_n_steps`` steps), the
    reference curve and the verdict also go to the run's loggers (TensorBoard).

    Attached by :class:`~sinefit.model.PolynomialRegressor` unless ``--model.parity false``.

    Args:
        coefficients: Reads the model's current coefficients, lowest power first, in the dtype it trains in.
        start: Reads the exact coefficients the run started from, in float64.
        optimizer: The model's optimizer, ``sgd`` or ``rmsprop``: the one the reference replays.
        every_n_steps: A row of the table every this many steps.
        max_point_steps: Skip (and say so) when points × steps exceeds this: the numpy replay then takes
            about as long as the training itself.
    """

    def __init__(
        self,
        coefficients: Callable[[], torch.Tensor],
        start: Callable[[], torch.Tensor],
        optimizer: reference.Optimizer,
        every_n_steps: PositiveInt = 100,
        max_point_steps: PositiveInt = 10**8,
    ) -> None:
        self.coefficients = coefficients
        self.start = start
        self.optimizer = optimizer
        self.every_n_steps = every_n_steps
        self.max_point_steps = max_point_steps
        self.report: ParityReport | None = None
        self._active = False  # this run is being recorded (comparable)
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._first_step = 0
        self._losses: list[torch.Tensor] = []  # the loss of each step, before its update
        self._coefficients: list[torch.Tensor] = []  # at the start, then after each step's update
        self._trained = torch.empty(0)  # the trained coefficients, from on_train_start

    def _skip_reason(self, trainer: L.Trainer) -> str | None:
        if trainer.world_size > 1:
            return f"it runs on {trainer.world_size} processes; the reference replays a single full-batch run"
        if trainer.accumulate_grad_batches != 1:
            return f"accumulate_grad_batches {trainer.accumulate_grad_batches}: the reference takes a step per batch"
        # By the precision setting, not the weights' dtype: mixed precision keeps float32 weights but
        # computes the step in half precision, which the float32 tolerance would wrongly call a mismatch.
        if str(trainer.precision) not in ("32-true", "64-true"):
            return f"precision {trainer.precision}: tolerances exist for 32-true and 64-true"
        datamodule = getattr(trainer, "datamodule", None)
        batch_size, num_samples = getattr(datamodule, "batch_size", None), getattr(datamodule, "num_samples", 0)
        if batch_size is not None and batch_size < num_samples:
            return f"it trains on mini-batches of {batch_size}; the reference replays full-batch steps"
        if num_samples * (trainer.max_steps or 0) > self.max_point_steps:
            return (
                f"{num_samples} points x {trainer.max_steps} steps exceeds {self.max_point_steps:g}: "
                "the numpy replay would take about as long as the training"
            )
        return None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.report, self._batch, self._losses = None, None, []
        reason = self._skip_reason(trainer)
        if reason is not None:
            say(f"Parity check skipped: {reason}.")
        self._active = reason is None
        self._first_step = trainer.global_step  # 0, or where a resumed run goes on
        # The parameter itself, looked up once: it stays the same tensor (updated in place) until training ends.
        self._trained = self.coefficients()
        self._coefficients = [self._trained.detach().clone()] if self._active else []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = step_loss(outputs)
        if self._active and loss is not None:
            if self._batch is None:
                self._batch = batch  # the very tensors the run trains on (full batch: the same every step)
            self._losses.append(loss.detach())
            self._coefficients.append(self._trained.detach().clone())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active or self._batch is None or not self._losses:
            return
        group = trainer.optimizers[0].param_groups[0]
        x, y = (t.detach().double().cpu().numpy() for t in self._batch)
        final = self.coefficients().detach()
        # The start the run really took: the exact initial coefficients in the dtype it trains in.
        start = self.start().to(final.dtype).double().cpu().numpy()
        replay = reference.run(
            self.optimizer,
            x,
            y,
            start,
            lr=group["lr"],
            num_steps=trainer.global_step,
            alpha=group.get("alpha", 0.99),
            eps=group.get("eps", 1e-8),
            record_every=1,
        )
        tolerance = Tolerance.for_run(
            self.optimizer,
            final.dtype,
            group["lr"],
            group.get("alpha", 0.99),
            x=x,
            w=replay.final_coefficients,
        )
        coefficients = torch.stack(self._coefficients).double().cpu().numpy()
        self.report = compare(
            steps=np.arange(self._first_step, self._first_step + len(self._losses)),
            lightning_losses=torch.stack(self._losses).double().cpu().numpy(),
            lightning_coefficients=coefficients[:-1],
            lightning_final=final.double().cpu().numpy(),
            replay=replay,
            x=x,
            y=y,
            tolerance=tolerance,
        )
        dtype = str(final.dtype).removeprefix("torch.")
        header = (
            f"Parity with the numpy reference ({self.optimizer}, lr={group['lr']:g}, {dtype}, "
            f"{trainer.global_step} steps from the same start):"
        )
        say(header + "\n" + self.report.format(self.every_n_steps))
        self._log(trainer, header)

    def _log(self, trainer: L.Trainer, header: str) -> None:
        report = self.report
        assert report is not None
        rows = zip(report.steps, report.reference_losses, report.relative_differences, strict=True)
        for t, ref_loss, rel in ((t, r, d) for t, r, d in rows if t < EARLY_STEPS or (t + 1) % self.every_n_steps == 0):
            for logger in trainer.loggers:
                logger.log_metrics({"parity/reference_loss": ref_loss, "parity/rel_diff": rel}, step=int(t))
        for logger in trainer.loggers:
            logger.log_metrics({"parity/match": float(report.match)}, step=trainer.global_step)
            experiment = getattr(logger, "experiment", None)
            if experiment is not None and hasattr(experiment, "add_text"):
                # Indented by four spaces: TensorBoard renders text as markdown, this keeps the table monospaced.
                lines = [header, *report.format(self.every_n_steps).splitlines()]
                text = "\n".join("    " + line for line in lines)
                experiment.add_text("parity", text, global_step=trainer.global_step)
