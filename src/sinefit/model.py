"""The model: a polynomial ``y = a + b·x + c·x² + d·x³`` (any degree) fitted by SGD or RMSprop."""

from __future__ import annotations

import math
from functools import partial

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

from litpoly.errors import SettingError
from sinefit.cache import ReuseLastInput
from sinefit.parity_check import ParityCheck
from sinefit.polynomial import coefficient_names, named_coefficients
from sinefit.reference import Optimizer
from sinefit.report import SineReport

Batch = tuple[Tensor, Tensor]

#: Default learning rate per optimizer, as in the seed. SGD's is tiny because the loss is a *sum* of
#: squared errors over 2000 points: its gradient is ~2000x that of a mean, and SGD is stable only
#: for lr < 2/λmax(2XᵀX) ≈ 3.56e-6 on the default data. RMSprop normalises the step, so 1e-3 works.
DEFAULT_LR: dict[str, float] = {"sgd": 1e-6, "rmsprop": 1e-3}


class Powers(nn.Module):
    """``x ↦ [x, x², …, x^degree]``, one row per point (the constant term needs none)."""

    def __init__(self, degree: int) -> None:
        super().__init__()
        self.degree = degree

    def forward(self, x: Tensor) -> Tensor:
        # x, x·x, x·x·x, …: the products numpy's vander takes too (and ONNX has no cumulative product).
        powers = [x]
        for _ in range(self.degree - 1):
            powers.append(powers[-1] * x)
        return torch.stack(powers, dim=-1) if self.degree else x.new_empty(x.shape[0], 0)


class PolynomialRegressor(L.LightningModule):
    """Fits ``y = Σ_k w_k x^k`` by minimising the sum of squared errors, as in the seed notebook.

    The model takes raw ``x`` and builds the powers itself, so ``model(x)`` is the fitted curve.

    Args:
        optimizer: ``sgd`` or ``rmsprop``.
        lr: Learning rate. Default: 1e-6 for SGD, 1e-3 for RMSprop (the seed's values; SGD's is small
            because the loss is a sum over all points).
        degree: Degree of the polynomial (3: a cubic with coefficients a, b, c, d).
        init_coefficients: Starting coefficients ``[a, b, c, d, …]``, lowest power first, ``degree + 1``
            of them; a float64 run starts from exactly these numbers. Default: standard-normal draws under
            the run's seed.
        parity: After ``fit``, replay the run with the numpy reference and print whether they agree.
        figure: Log the fitted curve as an image (and the equation as text) to TensorBoard at each validation.

    Example:
        >>> model = PolynomialRegressor(init_coefficients=[1.0, 0.0, 0.0, 2.0])
        >>> model(torch.tensor([0.0, 1.0, 2.0])).tolist()
        [1.0, 3.0, 17.0]
    """

    initial_coefficients: Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        optimizer: Optimizer = "sgd",
        lr: float | None = None,
        degree: NonNegativeInt = 3,
        init_coefficients: list[float] | None = None,
        parity: bool = True,
        figure: bool = True,
    ) -> None:
        super().__init__()
        if optimizer not in DEFAULT_LR:
            raise ValueError(f"Expected `model.optimizer` to be one of {sorted(DEFAULT_LR)}, got {optimizer!r}")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            # A plain float checked here, not PositiveFloat: jsonargparse's message for `Optional[PositiveFloat]`
            # is a multi-line dump of union subtypes; this one names the setting and what is allowed.
            raise ValueError(f"Expected `model.lr` to be a positive finite number (or null for the default), got {lr}")
        if degree < 0:
            raise ValueError(f"Expected `model.degree` to be >= 0, got {degree}")
        if init_coefficients is None:
            # Drawn under the global RNG, which LightningCLI seeds (`seed_everything`) before building the model.
            start = torch.randn(degree + 1).double()
        elif len(init_coefficients) != degree + 1 or not all(math.isfinite(c) for c in init_coefficients):
            names = ", ".join(coefficient_names(degree))
            raise ValueError(
                f"Expected `model.init_coefficients` to be {degree + 1} finite numbers ({names}) for degree "
                f"{degree}, got {init_coefficients}"
            )
        else:
            start = torch.tensor(init_coefficients, dtype=torch.float64)
        self.save_hyperparameters()
        self.lr = DEFAULT_LR[optimizer] if lr is None else lr
        # The hyperparameters record what the run used: the default lr and the drawn start, not "None".
        self.hparams.update(lr=self.lr, init_coefficients=start.tolist())
        self.optimizer_name: Optimizer = optimizer
        self.degree = degree
        self.coefficients = nn.Parameter(start.float())
        # The exact start, in float64 whatever the run's precision: a float64 run begins from these very numbers
        # (see on_fit_start), and any run can be replayed from it.
        self.register_buffer("initial_coefficients", start)
        # Full-batch training feeds the same points every step: their powers are built once, as the seed builds
        # `xx` once before its loop (at 20 million points, building them every step would cost more than the step).
        self.powers = ReuseLastInput(Powers(degree))
        # An input of the right shape, for Lightning (model summary) and for export (scripts/export.py).
        self.example_input_array = torch.linspace(-math.pi, math.pi, 8)
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, x: Tensor) -> Tensor:
        """The polynomial at the points ``x`` (1-D): ``a + [x, x², …] @ [b, c, …]``."""
        w = self.coefficients
        # addmv(bias, X, w) is bias + X @ w in one pass, as nn.Linear adds its bias (the bias expanded to a
        # vector: autograd refuses a 0-d one beside degree 0's empty matrix).
        return torch.addmv(w[0].expand(x.shape[0]), self.powers(x), w[1:])

    def coefficient_dict(self) -> dict[str, float]:
        """The current coefficients by name (``{'a': …, 'b': …}``), as Python floats."""
        return named_coefficients(self.coefficients.detach().cpu().tolist())

    def setup(self, stage: str) -> None:
        num_samples = getattr(getattr(self.trainer, "datamodule", None), "num_samples", None)
        if num_samples is not None and num_samples < self.degree + 1:
            raise SettingError(
                f"Expected `data.num_samples` >= `model.degree` + 1 = {self.degree + 1} (a degree-{self.degree} "
                f"polynomial needs that many points), got {num_samples}"
            )

    def on_fit_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a new run (a resumed one has its weights from the checkpoint)
            with torch.no_grad():  # in the precision's dtype by now: float64 keeps every digit of the start
                self.coefficients.copy_(self.initial_coefficients)

    def _shared_step(self, batch: Batch, stage: str) -> Tensor:
        x, y = batch
        y_hat = self(x)
        # The seed's loss: the SUM of squared errors (not the mean), which is why SGD's lr is 1e-6.
        # Summed across processes too (sync_dist), so that the logged loss is the total over all points.
        loss = F.mse_loss(y_hat, y, reduction="sum")
        if stage == "train":
            self.log("train/loss", loss, prog_bar=True, reduce_fx="sum", sync_dist=True)
        else:
            metrics = self.val_metrics if stage == "val" else self.test_metrics
            metrics.update(y_hat, y)
            self.log(f"{stage}/sse", loss, reduce_fx="sum", sync_dist=True, batch_size=y.shape[0])
            self.log_dict(metrics)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        # DDP averages the processes' gradients, and each process sums over its own shard of the points:
        # multiplied by their number, the update follows the gradient of the sum over all points.
        return loss * self.trainer.world_size

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        return {"x": x, "target": y, "prediction": self(x)}

    def on_train_end(self) -> None:
        self.powers.clear()  # don't hold the training points' powers after fit

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "rmsprop":
            return torch.optim.RMSprop(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)

    def configure_callbacks(self) -> list[L.Callback]:
        """The example's own reports, attached wherever the model runs (fit, validate, test, predict).

        They are handed the settings they report on, and functions that read the coefficients and their exact
        start when needed (rather than tensors now): the coefficients change every step, moving the model to the
        run's device replaces the start's tensor, and a resumed run loads both from its checkpoint."""
        coefficients = partial(self.get_parameter, "coefficients")
        figure = bool(self.hparams.get("figure", True))
        callbacks: list[L.Callback] = [SineReport(coefficients, self.optimizer_name, self.lr, figure=figure)]
        if self.hparams.get("parity", True):
            start = partial(self.get_buffer, "initial_coefficients")
            callbacks.append(ParityCheck(coefficients, start, self.optimizer_name))
        return callbacks
