"""The numpy reference: the seed's manual-gradient loops, the closed-form optimum and SGD's stability limit.

This module imports numpy only — never torch — so it stays an independent witness of what the
Lightning model computes. Everything is float64 and written out by hand:

- loss      L(w) = Σ_i (Σ_k w_k x_i^k − y_i)²       (the seed's sum of squared errors)
- gradient  ∇L(w) = 2·Xᵀ(Xw − y)                     (X: the Vandermonde matrix, X_ik = x_i^k)
- SGD       w ← w − lr·∇L(w)
- RMSprop   v ← α·v + (1 − α)·∇L²,  w ← w − lr·∇L / (√v + ε)   (torch.optim.RMSprop, no momentum)

Example:
    >>> import numpy as np
    >>> x = np.linspace(-np.pi, np.pi, 2000)
    >>> w, sse = closed_form(x, np.sin(x))
    >>> round(float(w[1]), 6), round(sse, 4)
    (0.856741, 8.8172)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]
#: The optimizers the reference replays (and the model offers).
Optimizer = Literal["sgd", "rmsprop"]


@dataclass(frozen=True)
class Trajectory:
    """What a reference run went through.

    Attributes:
        steps: The 0-based steps ``t`` that were recorded (as the seed's ``if t % 100 == 99``).
        losses: The loss at each recorded step, computed *before* that step's update (as the seed prints it).
        coefficients: The coefficients at each recorded step, before that step's update;
            shape ``(len(steps), degree + 1)``.
        final_coefficients: The coefficients after the last update.
        final_loss: The loss at ``final_coefficients``.
        first_sign_change: The first step at which some component of the gradient has the opposite
            sign from the step before (``None`` if none did). From there on RMSprop's ±lr steps can be
            flipped by rounding, so two RMSprop runs may part by O(lr); SGD is not affected.
    """

    steps: NDArray[np.int64]
    losses: Array
    coefficients: Array
    final_coefficients: Array
    final_loss: float
    first_sign_change: int | None


def vandermonde(x: ArrayLike, degree: int) -> Array:
    """The matrix of powers ``X[i, k] = x_i**k``, ``k = 0 … degree``."""
    return np.vander(np.asarray(x, dtype=np.float64), degree + 1, increasing=True)


def sum_squared_error(x: ArrayLike, y: ArrayLike, w: ArrayLike) -> float:
    """The seed's loss ``Σ (Σ_k w_k x^k − y)²``."""
    w = np.asarray(w, dtype=np.float64)
    residual = vandermonde(x, w.shape[0] - 1) @ w - np.asarray(y, dtype=np.float64)
    return float(residual @ residual)


def run(
    optimizer: Optimizer,
    x: ArrayLike,
    y: ArrayLike,
    w0: ArrayLike,
    lr: float,
    num_steps: int,
    *,
    alpha: float = 0.99,
    eps: float = 1e-8,
    record_every: int = 100,
) -> Trajectory:
    """Run the seed's full-batch loop with manual gradients, from ``w0``, for ``num_steps`` updates.

    Args:
        optimizer: ``sgd`` or ``rmsprop``.
        x: The training inputs.
        y: The targets.
        w0: The initial coefficients, lowest power first; their number sets the degree.
        lr: Learning rate.
        num_steps: Number of updates.
        alpha: RMSprop's smoothing constant (torch's default 0.99).
        eps: RMSprop's term added to the denominator (torch's default 1e-8).
        record_every: Record loss and coefficients at steps ``t`` with ``t % record_every == record_every - 1``.

    Returns:
        The recorded :class:`Trajectory`.
    """
    w = np.array(w0, dtype=np.float64)
    update = _update_rule(optimizer, lr, alpha, eps, w.shape[0])
    vander = vandermonde(x, w.shape[0] - 1)
    target = np.asarray(y, dtype=np.float64)
    steps, losses, coefficients = [], [], []
    first_sign_change, previous_sign = None, None
    # A diverging run (lr above the stability limit) is a legitimate result: let it reach inf/nan quietly.
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(num_steps):
            residual = vander @ w - target
            if t % record_every == record_every - 1:
                steps.append(t)
                losses.append(float(residual @ residual))
                coefficients.append(w.copy())
            grad = 2.0 * vander.T @ residual
            sign = np.sign(grad)
            if first_sign_change is None and previous_sign is not None and np.any(sign * previous_sign < 0):
                first_sign_change = t
            previous_sign = sign
            w = update(w, grad)
        final = vander @ w - target
    return Trajectory(
        steps=np.array(steps, dtype=np.int64),
        losses=np.array(losses),
        coefficients=np.array(coefficients).reshape(len(steps), w.shape[0]),
        final_coefficients=w,
        final_loss=float(final @ final),
        first_sign_change=first_sign_change,
    )


def _update_rule(
    optimizer: Optimizer, lr: float, alpha: float, eps: float, size: int
) -> Callable[[Array, Array], Array]:
    """One step of ``optimizer``, ``w, ∇L(w) ↦ w_next``; RMSprop's running average ``v`` is kept between calls."""
    if optimizer == "sgd":
        return lambda w, grad: w - lr * grad
    if optimizer != "rmsprop":
        raise ValueError(f"Expected `optimizer` to be 'sgd' or 'rmsprop', got {optimizer!r}")
    square_avg = np.zeros(size)

    def rmsprop(w: Array, grad: Array) -> Array:
        nonlocal square_avg
        square_avg = alpha * square_avg + (1.0 - alpha) * grad * grad
        return w - lr * grad / (np.sqrt(square_avg) + eps)

    return rmsprop


def closed_form(x: ArrayLike, y: ArrayLike, degree: int = 3, chunk: int = 100_000) -> tuple[Array, float]:
    """The least-squares optimum ``argmin_w L(w)`` and its loss: the floor of every run.

    Up to ``chunk`` points it is ``np.linalg.lstsq`` on the Vandermonde matrix. Beyond that (e.g. 20
    million points, whose float64 Vandermonde matrix alone is 640 MB) it solves the normal equations
    ``XᵀX w = Xᵀy``, accumulated ``chunk`` rows at a time, so memory stays flat; in float64 that
    agrees with lstsq to ~1e-10 for a cubic on [-π, π]. ``x`` and ``y`` may be float32: each chunk is
    converted to float64 on its own, so no float64 copy of all the points is ever made.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.shape[0] <= chunk:
        vander = vandermonde(x, degree)
        target = y.astype(np.float64)
        solution, *_ = np.linalg.lstsq(vander, target, rcond=None)
        w = np.asarray(solution, dtype=np.float64)
        residual = vander @ w - target
        return w, float(residual @ residual)
    gram, moment = normal_equations(x, y, degree, chunk)
    w = np.asarray(np.linalg.solve(gram, moment), dtype=np.float64)
    sse = 0.0
    for start in range(0, x.shape[0], chunk):
        residual = vandermonde(x[start : start + chunk], degree) @ w - y[start : start + chunk]
        sse += float(residual @ residual)
    return w, sse


def normal_equations(x: ArrayLike, y: ArrayLike | None, degree: int, chunk: int = 100_000) -> tuple[Array, Array]:
    """``XᵀX`` and ``Xᵀy`` (zeros without ``y``), accumulated ``chunk`` rows at a time in float64."""
    x = np.asarray(x)
    gram, moment = np.zeros((degree + 1, degree + 1)), np.zeros(degree + 1)
    for start in range(0, x.shape[0], chunk):
        vander = vandermonde(x[start : start + chunk], degree)
        gram += vander.T @ vander
        if y is not None:
            moment += vander.T @ np.asarray(y)[start : start + chunk].astype(np.float64)
    return gram, moment


def sgd_stability_limit(x: ArrayLike, degree: int = 3) -> float:
    """The largest stable SGD learning rate for the summed loss: ``2 / λmax(2·XᵀX)``.

    Gradient descent on a quadratic with Hessian ``H = 2·XᵀX`` contracts every eigen-direction only
    while ``|1 − lr·λ| < 1``, i.e. ``lr < 2/λmax``. About 3.56e-6 on the default 2000 points.
    """
    gram, _ = normal_equations(x, None, degree)
    return float(2.0 / np.linalg.eigvalsh(2.0 * gram)[-1])
