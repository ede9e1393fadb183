"""Reproduce the seed notebook in one command: numpy, raw PyTorch and Lightning, side by side.

From the same initial coefficients and the same points, it runs

- the numpy manual-gradient loop (``sinefit.reference``, SGD),
- the raw PyTorch autograd loop (SGD, the seed's second cell),
- the raw ``torch.nn`` + RMSprop loop (the seed's third cell),
- the example's Lightning model with SGD and with RMSprop,

prints the loss every 100 steps side by side and each run's ``Result: y = …`` line, and saves a
PNG of the loss curves (log scale) and the fitted curves against sin(x)::

    python scripts/compare.py
    python scripts/compare.py --steps 500 --precision 64 --out /tmp/compare.png
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from jsonargparse import auto_cli

from litpoly.cli import DEFAULT_SEED
from litpoly.compat import quiet_irrelevant_messages
from litpoly.console import step_loss
from sinefit import PolynomialRegressor, SineDataModule, reference
from sinefit.baselines import Curve, autograd_loop, nn_loop
from sinefit.polynomial import format_polynomial


class _LossRecorder(L.Callback):
    """Keeps the training loss every ``every`` steps (0-based step t with t % every == every - 1)."""

    def __init__(self, every: int) -> None:
        self.every, self.steps, self.losses = every, [], []  # type: ignore[var-annotated]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        if trainer.global_step % self.every == 0:
            self.steps.append(trainer.global_step - 1)
            loss = step_loss(outputs)
            assert loss is not None
            self.losses.append(loss.item())


def lightning_run(
    optimizer: Literal["sgd", "rmsprop"],
    w0: list[float],
    lr: float,
    steps: int,
    every: int,
    num_samples: int,
    precision: Literal["32-true", "64-true"],
) -> Curve:
    """litpoly's model and data module under a bare Trainer (no logger, bar or checkpoint)."""
    recorder = _LossRecorder(every)
    trainer = L.Trainer(
        max_steps=steps, precision=precision, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, callbacks=[recorder],
    )  # fmt: skip
    model = PolynomialRegressor(optimizer=optimizer, lr=lr, init_coefficients=w0, parity=False, figure=False)
    trainer.fit(model, SineDataModule(num_samples=num_samples))
    return Curve(recorder.steps, recorder.losses, model.coefficients.tolist())


def plot(curves: dict[str, Curve], x: np.ndarray, out: Path) -> None:
    """Loss curves on a log scale, and each run's fitted cubic against sin(x)."""
    import matplotlib  # imported here: only this figure needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_fit) = plt.subplots(1, 2, figsize=(12, 4.5))
    # Distinct dash patterns: runs that agree lie exactly on top of each other, and should still be seen.
    styles = ["-", "--", ":", "-.", (0, (5, 1, 1, 1))]
    for (name, curve), style in zip(curves.items(), styles * len(curves), strict=False):
        ax_loss.plot(curve.steps, curve.losses, label=name, ls=style, lw=2)
        ax_fit.plot(x, np.polynomial.polynomial.polyval(x, curve.final_coefficients), label=name, ls=style, lw=2)
    ax_fit.plot(x, np.sin(x), "k--", lw=2, label="sin(x)")
    ax_loss.set(yscale="log", xlabel="step", ylabel="sum of squared errors", title="Training loss")
    ax_fit.set(xlabel="x", ylabel="y", title="Fitted cubic after training")
    for ax in (ax_loss, ax_fit):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def compare(
    steps: int = 2400,
    seed: int = DEFAULT_SEED,
    num_samples: int = 2000,
    sgd_lr: float = 1e-6,
    rmsprop_lr: float = 1e-3,
    precision: Literal["32", "64"] = "32",
    every: int = 100,
    out: Path = Path("lightning_logs/compare.png"),
) -> dict[str, Curve]:
    """Run every implementation from the same start and compare them.

    Args:
        steps: Optimizer steps for every run.
        seed: Seed of the shared random initial coefficients.
        num_samples: Number of training points in [-π, π].
        sgd_lr: Learning rate of the SGD runs (the seed's 1e-6).
        rmsprop_lr: Learning rate of the RMSprop runs (the seed's 1e-3).
        precision: 32 or 64 bits for the PyTorch and Lightning runs (numpy is always float64).
        every: Record and print the loss every this many steps.
        out: Where to save the PNG.
    """
    quiet_irrelevant_messages()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # the table is the output here
    dtype = torch.float64 if precision == "64" else torch.float32
    trainer_precision: Literal["32-true", "64-true"] = "64-true" if precision == "64" else "32-true"
    w0 = torch.randn(4, generator=torch.Generator().manual_seed(seed)).tolist()
    datamodule = SineDataModule(num_samples=num_samples)
    x64 = datamodule.train_x
    x, y = x64.to(dtype), datamodule.target(x64).to(dtype)  # the very points litpoly trains on
    x_np, y_np = x.double().numpy(), y.double().numpy()

    numpy_sgd = reference.run("sgd", x_np, y_np, w0, sgd_lr, steps, record_every=every)
    curves = {
        "numpy SGD": Curve(numpy_sgd.steps.tolist(), numpy_sgd.losses.tolist(), numpy_sgd.final_coefficients.tolist()),
        "torch autograd SGD": autograd_loop(x, y, w0, sgd_lr, steps, every),
        "Lightning SGD": lightning_run("sgd", w0, sgd_lr, steps, every, num_samples, trainer_precision),
        "torch nn RMSprop": nn_loop("rmsprop", x, y, w0, rmsprop_lr, steps, every),
        "Lightning RMSprop": lightning_run("rmsprop", w0, rmsprop_lr, steps, every, num_samples, trainer_precision),
    }

    print(f"Same start for every run: {format_polynomial(w0)}")
    print(f"Seed {seed}, {num_samples} points; PyTorch and Lightning in float{precision}, numpy in float64.")
    names = list(curves)
    print(f"{'step':>6}" + "".join(f"{name:>20}" for name in names))
    for row, t in enumerate(curves[names[0]].steps):
        print(f"{t:6d}" + "".join(f"{curves[name].losses[row]:20.8g}" for name in names))
    for name in names:
        print(f"{name + ':':20} Result: {format_polynomial(curves[name].final_coefficients)}")
    optimum, floor = reference.closed_form(x_np, y_np)
    print(f"{'closed form:':20} Result: {format_polynomial(optimum.tolist())}  (loss {floor:.7g})")
    plot(curves, x_np, out)
    print(f"Figure saved to {out}")
    return curves


if __name__ == "__main__":
    auto_cli(compare, as_positional=False)
