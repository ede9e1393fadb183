"""The model: a polynomial ``y = a + b·x + c·x² + d·x³`` (any degree) fitted by SGD or RMSprop."""

from __future__ import annotations

import math
import string
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import NonNegativeInt
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanSquaredError, MetricCollection, R2Score

from litpoly.data import Batch

Optimizer = Literal["sgd", "rmsprop"]

#: Default learning rate per optimizer, as in the seed. SGD's is tiny because the loss is a *sum* of
#: squared errors over 2000 points: its gradient is ~2000x that of a mean, and SGD is stable only
#: for lr < 2/λmax(2XᵀX) ≈ 3.56e-6 on the default data. RMSprop normalises the step, so 1e-3 works.
DEFAULT_LR: dict[str, float] = {"sgd": 1e-6, "rmsprop": 1e-3}


def coefficient_names(degree: int) -> list[str]:
    """Names of the coefficients, lowest power first: ``a, b, c, d`` for a cubic (``w0, w1, …`` past 25).

    Example:
        >>> coefficient_names(3)
        ['a', 'b', 'c', 'd']
    """
    if degree < len(string.ascii_lowercase):
        return list(string.ascii_lowercase[: degree + 1])
    return [f"w{k}" for k in range(degree + 1)]


def format_polynomial(coefficients: list[float]) -> str:
    """The seed's result line: ``y = a + b x + c x^2 + d x^3`` with the numbers filled in.

    Example:
        >>> format_polynomial([0.5, -1.0, 2.0])
        'y = 0.5 + -1.0 x + 2.0 x^2'
    """
    terms = [f"{c}" if k == 0 else f"{c} x" if k == 1 else f"{c} x^{k}" for k, c in enumerate(coefficients)]
    return "y = " + " + ".join(terms)


class PolynomialRegressor(L.LightningModule):
    """Fits ``y = Σ_k w_k x^k`` by minimising the sum of squared errors, as in the seed notebook.

    The model takes raw ``x`` and builds the powers itself, so ``model(x)`` is the fitted curve.

    Args:
        optimizer: ``sgd`` or ``rmsprop``.
        lr: Learning rate. Default: 1e-6 for SGD, 1e-3 for RMSprop (the seed's values; SGD's is small
            because the loss is a sum over all points).
        degree: Degree of the polynomial (3: a cubic with coefficients a, b, c, d).
        init_coefficients: Starting coefficients ``[a, b, c, d, …]``, lowest power first, ``degree + 1``
            of them. Default: standard-normal draws under the run's seed.

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
            start = torch.randn(degree + 1)
        else:
            if len(init_coefficients) != degree + 1 or not all(math.isfinite(c) for c in init_coefficients):
                names = ", ".join(coefficient_names(degree))
                raise ValueError(
                    f"Expected `model.init_coefficients` to be {degree + 1} finite numbers ({names}) for degree "
                    f"{degree}, got {init_coefficients}"
                )
            start = torch.tensor(init_coefficients, dtype=torch.float32)
        self.save_hyperparameters()
        self.optimizer_name: Optimizer = optimizer
        self.lr = DEFAULT_LR[optimizer] if lr is None else lr
        self.degree = degree
        self.coefficients = nn.Parameter(start.clone())
        # Kept in every checkpoint so any run can be replayed by the numpy reference from the same start.
        self.register_buffer("initial_coefficients", start.clone())
        self._powers_cache: tuple[Tensor, int, Tensor] | None = None
        metrics = MetricCollection({"mse": MeanSquaredError(), "mae": MeanAbsoluteError(), "r2": R2Score()})
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")

    def forward(self, x: Tensor) -> Tensor:
        """Evaluate the polynomial at ``x`` (1-D).

        Training (grad enabled) multiplies the matrix of powers by the coefficients, as the seed's
        ``nn.Linear`` does: the backward pass is then one matrix-vector product. Evaluation needs no
        backward and uses Horner's rule, ``a + x(b + x(c + x·d))``, which needs no matrix of powers:
        at 20 million points that matrix would be 240 MB for one validation.
        """
        w = self.coefficients
        if torch.is_grad_enabled():
            # addmv fuses the constant term into the product, as nn.Linear's addmm does its bias
            # (expanded to a vector: autograd refuses a 0-d term with degree 0's empty matrix).
            return torch.addmv(w[0].expand(x.shape[0]), self.powers(x), w[1:])
        y = torch.empty_like(x).fill_(w[-1])
        for c in w.flip(0)[1:]:
            y.mul_(x).add_(c)
        return y

    def powers(self, x: Tensor) -> Tensor:
        """The matrix ``[x, x², …, x^degree]`` of ``x``, one row per point (the constant term needs none).

        Memoised for the last tensor seen in training: full-batch training feeds the very same
        tensor every step, so its powers are built once — as the seed's raw loop builds ``xx``
        once — not 2400 times (the build costs as much as the rest of a 2000-point step, and at
        20 million points it would allocate 240 MB a step). The version counter catches in-place
        edits of ``x``.
        """
        cached = self._powers_cache
        if cached is not None and cached[0] is x and cached[1] == x._version:
            return cached[2]
        powers = x.unsqueeze(-1).expand(-1, self.degree).cumprod(dim=-1)
        self._powers_cache = (x, x._version, powers)
        return powers

    def on_train_end(self) -> None:
        self._powers_cache = None  # don't hold the training batch's powers after fit

    def coefficient_dict(self) -> dict[str, float]:
        """The current coefficients by name (``{'a': …, 'b': …}``), as Python floats."""
        return dict(zip(coefficient_names(self.degree), self.coefficients.detach().cpu().tolist(), strict=True))

    def _shared_step(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        y_hat = self(x)
        # The seed's loss: the SUM of squared errors (not the mean), which is why SGD's lr is 1e-6.
        return F.mse_loss(y_hat, y, reduction="sum"), y_hat, y

    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        """One optimizer step's loss.

        Returns ``loss`` (what Lightning backpropagates) and ``sse``, this process's sum of squared
        errors (what callbacks report). They differ only under DDP: each process sees a shard of the
        points, and DDP *averages* gradients across processes, so the loss is multiplied by the
        number of processes to make the update the gradient of the full sum, as on one process.
        """
        sse, _, _ = self._shared_step(batch)
        # `self.log` costs ~0.3 ms a call here, five raw training steps, and Lightning only writes step
        # metrics every `log_every_n_steps` anyway. So log exactly on those steps and skip the
        # bookkeeping on the others: the curve is the same, the step is cheaper. (The coefficients,
        # the gap to the optimum and the lr go to TensorBoard in one call: see TensorBoardReport.)
        every = self.trainer.log_every_n_steps  # type: ignore[attr-defined]  # set at runtime by Lightning
        if every > 0 and (self.global_step + 1) % every == 0:
            self.log("train/loss", sse, prog_bar=True, reduce_fx="sum", sync_dist=True)
        return {"loss": sse * self.trainer.world_size, "sse": sse.detach()}

    def _eval_step(self, batch: Batch, metrics: MetricCollection, stage: str) -> None:
        loss, y_hat, y = self._shared_step(batch)
        metrics.update(y_hat, y)
        # reduce_fx="sum", sync_dist: with several batches or processes the logged value is the total.
        self.log(f"{stage}/sse", loss, reduce_fx="sum", sync_dist=True, batch_size=y.shape[0])
        self.log_dict(metrics)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        return {"x": x, "target": y, "prediction": self(x)}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "rmsprop":
            return torch.optim.RMSprop(self.parameters(), lr=self.lr)
        return torch.optim.SGD(self.parameters(), lr=self.lr)
