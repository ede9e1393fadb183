"""Parity: replay a finished Lightning run with the numpy reference and say whether they agree.

The comparison (:func:`compare`) is plain numpy over what both runs recorded; the callback
(:class:`sinefit.parity_check.ParityCheck`) records the Lightning side cheaply during ``fit`` and prints the report.

Tolerances come from measurement on this problem (2400 steps, seeds 0–9 and 1234) and from the run itself:

- SGD is linear in the gradient, so the two runs differ by rounding only, at every step:
  relative loss difference ≤ ~5e-15 and coefficients ≤ ~7e-16 in float64, ≤ ~4e-6 and ~7e-7 in float32.
  A long float32 run also *stalls*: near the optimum an update smaller than half a unit in the last place
  of a coefficient rounds away, so the run stops where the exact one goes on, up to 1.4e-5 from it after
  10 000 steps. :func:`sgd_stall_bound` derives that distance from the run's points, lr, dtype and end,
  and the coefficient tolerance allows twice it.
- RMSprop matches as tightly while the run is far from the optimum. Near it, its step is ±lr
  whatever the gradient's size, so once a gradient component changes sign a rounding difference
  can flip a step, and the two runs wander apart by O(lr) — in float64 as in float32. From the
  reference's first gradient sign change on, coefficients are held to ``2·lr / sqrt(1 − alpha)``:
  RMSprop's running average obeys ``v ≥ (1 − alpha)·g²``, so no step is longer than
  ``lr / sqrt(1 − alpha)`` (10·lr for the default alpha), and two runs that each stay within one
  such step of a common path are at most twice that apart. The SGD bounds are never widened for RMSprop.

Every step is compared, so an RMSprop run that leaves lock-step early is still checked tightly where it can be.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from sinefit import reference
from sinefit.polynomial import coefficient_names

#: Rounding tolerances per dtype: (relative loss difference, absolute coefficient difference).
ROUNDING_TOLERANCE: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-12, 1e-12),
    torch.float32: (2e-5, 5e-6),
}

#: The table sums up steps 0 … EARLY_STEPS-1 in one line, then shows a row every ``every_n_steps`` steps.
EARLY_STEPS = 10


def sgd_stall_bound(x: np.ndarray, w: np.ndarray, lr: float, dtype: torch.dtype) -> float:
    """How far from where the exact run goes a run in ``dtype`` may stop: SGD's stall, derived from the run.

    An update ``lr·g_k`` smaller than half a unit in the last place of ``w_k`` rounds away: the run stops moving
    along ``k`` once ``|g_k| < ulp(w_k) / (2·lr)``. The gradient of this quadratic loss is ``H·(w − w*)`` with
    ``H = 2·XᵀX``, so a stalled run is within ``|H⁻¹|·ulp(w) / (2·lr)`` of the optimum ``w*`` in each
    coefficient — while the exact run goes on towards it. In float32 at lr 1e-6 on the default 2000 points
    that is 1.44e-5 (measured gap after 10 000 steps: 1.4e-5); in float64, 3e-14.

    Args:
        x: The training points.
        w: Coefficients near where the run ends (the reference's final ones).
        lr: SGD's learning rate.
        dtype: The run's dtype.
    """
    gram, _ = reference.normal_equations(x, None, len(w) - 1)
    finfo = torch.finfo(dtype)  # a unit in the last place of |w|: eps·2^floor(log2|w|) (any float dtype, bf16 too)
    ulp = finfo.eps * np.exp2(np.floor(np.log2(np.maximum(np.abs(w), finfo.tiny))))
    return float((np.abs(np.linalg.inv(2.0 * gram)) @ (ulp / (2.0 * lr))).max())


@dataclass(frozen=True)
class Tolerance:
    """What counts as agreement.

    Attributes:
        loss_rtol: Largest relative loss difference while the runs are in lock-step.
        coef_atol: Largest coefficient difference while the runs are in lock-step.
        wander_atol: RMSprop only: largest coefficient difference once the reference's gradient has
            changed sign (``None`` for SGD, which stays in lock-step throughout).
        stall_atol: SGD only: the part of ``coef_atol`` that allows for a stalled run (see
            :func:`sgd_stall_bound`), 0 for RMSprop.
    """

    loss_rtol: float
    coef_atol: float
    wander_atol: float | None = None
    stall_atol: float = 0.0

    @classmethod
    def for_run(
        cls,
        optimizer: str,
        dtype: torch.dtype,
        lr: float,
        alpha: float = 0.99,
        x: np.ndarray | None = None,
        w: np.ndarray | None = None,
    ) -> Tolerance:
        """The tolerance for a run of ``optimizer`` in ``dtype`` (float32 or float64), on the points ``x``, ending
        near ``w``: the rounding measured over 2400 steps, and for SGD twice the stall bound derived from the
        run (:func:`sgd_stall_bound`), so that a run of any length is judged right. RMSprop never stalls while
        in lock-step (far from the optimum); after its first gradient sign change it is held to
        ``2·lr/sqrt(1 − alpha)``."""
        loss_rtol, coef_atol = ROUNDING_TOLERANCE[dtype]
        if optimizer == "rmsprop":
            return cls(loss_rtol, coef_atol, 2.0 * lr / math.sqrt(1.0 - alpha))
        stall = 2.0 * sgd_stall_bound(x, w, lr, dtype) if x is not None and w is not None else 0.0
        return cls(loss_rtol, coef_atol + stall, None, stall)

    def describe(self) -> str:
        rounding = self.coef_atol - self.stall_atol
        stall = f": {rounding:g} of rounding + {self.stall_atol:.2g} for a stalled SGD" if self.stall_atol else ""
        text = f"loss rel. diff ≤ {self.loss_rtol:g}, coefficients ≤ {self.coef_atol:.2g}{stall}"
        if self.wander_atol is not None:
            text += f"; after the first gradient sign change coefficients ≤ 2·lr/sqrt(1-alpha) = {self.wander_atol:g}"
        return text


@dataclass(frozen=True)
class ParityReport:
    """The side-by-side comparison of a Lightning run and its numpy replay."""

    steps: np.ndarray
    lightning_losses: np.ndarray
    reference_losses: np.ndarray
    lightning_coefficients: np.ndarray
    reference_coefficients: np.ndarray
    lightning_final: np.ndarray
    reference_final: np.ndarray
    optimum: np.ndarray
    lightning_final_loss: float
    reference_final_loss: float
    optimum_loss: float
    lockstep_until: int | None
    tolerance: Tolerance
    failures: tuple[str, ...]

    @property
    def match(self) -> bool:
        return not self.failures

    @property
    def relative_differences(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):  # a diverged run shows as inf/nan, on purpose
            rel: np.ndarray = np.abs(self.lightning_losses - self.reference_losses) / np.abs(self.reference_losses)
        return rel

    def format(self, every_n_steps: int = 100) -> str:
        """The table printed after ``fit``: a row every ``every_n_steps`` steps, the early steps in one line."""
        rel = self.relative_differences
        early = self.steps < EARLY_STEPS
        lines = []
        if early.any():
            lines.append(f"steps 0-{self.steps[early].max()}: max loss rel. diff {rel[early].max():.2e}")
        lines.append("  step  lightning loss  reference loss  rel. diff")
        for t, a, b, r in zip(self.steps, self.lightning_losses, self.reference_losses, rel, strict=True):
            if (t + 1) % every_n_steps == 0:
                lines.append(f"{t:6d}  {a:14.8g}  {b:14.8g}  {r:9.2e}")
        names = coefficient_names(len(self.optimum) - 1)
        lines.append(f"{'':10}" + "".join(f"{n:>13}" for n in names) + f"{'loss':>13}{'gap to opt.':>13}")
        for label, w, loss in (
            ("lightning", self.lightning_final, self.lightning_final_loss),
            ("reference", self.reference_final, self.reference_final_loss),
            ("optimum", self.optimum, self.optimum_loss),
        ):
            cells = "".join(f"{v:13.6g}" for v in w)
            lines.append(f"{label:10}{cells}{loss:13.6g}{loss - self.optimum_loss:13.3g}")
        if self.lockstep_until is not None and self.tolerance.wander_atol is not None:
            lines.append(
                f"(RMSprop: lock-step until step {self.lockstep_until}, the reference's first gradient sign change)"
            )
        verdict = "MATCH" if self.match else "MISMATCH: " + "; ".join(self.failures)
        lines.append(f"Verdict: {verdict} (tolerance: {self.tolerance.describe()})")
        return "\n".join(lines)


def compare(
    steps: np.ndarray,
    lightning_losses: np.ndarray,
    lightning_coefficients: np.ndarray,
    lightning_final: np.ndarray,
    replay: reference.Trajectory,
    x: np.ndarray,
    y: np.ndarray,
    tolerance: Tolerance,
) -> ParityReport:
    """Compare what a Lightning run recorded with the reference ``replay`` of the same run.

    Args:
        steps: The recorded 0-based steps (a subset of ``replay.steps``).
        lightning_losses: Lightning's loss at those steps, before each step's update.
        lightning_coefficients: Lightning's coefficients at those steps, before each update.
        lightning_final: Lightning's final coefficients.
        replay: The reference trajectory from the same start, data, optimizer and lr.
        x: The training inputs the run used (for the final losses and the optimum).
        y: The targets the run used.
        tolerance: What counts as agreement.
    """
    index = np.searchsorted(replay.steps, steps)
    ref_losses, ref_coefficients = replay.losses[index], replay.coefficients[index]
    optimum, optimum_loss = reference.closed_form(x, y, len(lightning_final) - 1)
    # SGD stays in lock-step throughout; RMSprop until its first gradient sign change (see module docstring).
    lockstep_until = replay.first_sign_change if tolerance.wander_atol is not None else None
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(lightning_losses - ref_losses) / np.abs(ref_losses)
    coef_diff = np.abs(lightning_coefficients - ref_coefficients).max(axis=1, initial=0.0)
    final_diff = float(np.abs(lightning_final - replay.final_coefficients).max())
    failures = _failures(steps, rel, coef_diff, final_diff, lockstep_until, tolerance)
    return ParityReport(
        steps=steps,
        lightning_losses=lightning_losses,
        reference_losses=ref_losses,
        lightning_coefficients=lightning_coefficients,
        reference_coefficients=ref_coefficients,
        lightning_final=lightning_final,
        reference_final=replay.final_coefficients,
        optimum=optimum,
        lightning_final_loss=reference.sum_squared_error(x, y, lightning_final),
        reference_final_loss=replay.final_loss,
        optimum_loss=optimum_loss,
        lockstep_until=lockstep_until,
        tolerance=tolerance,
        failures=failures,
    )


def _failures(
    steps: np.ndarray,
    rel: np.ndarray,
    coef_diff: np.ndarray,
    final_diff: float,
    lockstep_until: int | None,
    tolerance: Tolerance,
) -> tuple[str, ...]:
    """Where the two runs disagree beyond ``tolerance``, one line each (none: they match), from the relative loss
    difference ``rel`` and the largest coefficient difference ``coef_diff`` at each of ``steps``, and the largest
    difference of the final coefficients; from step ``lockstep_until`` on (``None``: never), RMSprop is held to
    ``tolerance.wander_atol``."""

    def lockstep(step: int | float) -> bool:
        return lockstep_until is None or step < lockstep_until

    # Comparisons are written as `not (diff <= tol)` so that a NaN anywhere is a failure, never a pass.
    failures = []
    tight = np.array([lockstep(t) for t in steps], dtype=bool)
    if not np.all(rel[tight] <= tolerance.loss_rtol):
        t = steps[tight][np.argmax(rel[tight])]
        failures.append(f"loss rel. diff {rel[tight].max():.2e} at step {t}")
    if not np.all(coef_diff[tight] <= tolerance.coef_atol):
        failures.append(
            f"coefficients differ by {coef_diff[tight].max():.2e} at step {steps[tight][np.argmax(coef_diff[tight])]}"
        )
    if tolerance.wander_atol is not None and not np.all(coef_diff[~tight] <= tolerance.wander_atol):
        failures.append(f"coefficients wandered {coef_diff[~tight].max():.2e} apart")
    final_atol = tolerance.coef_atol if lockstep(math.inf) else tolerance.wander_atol
    if final_atol is not None and not final_diff <= final_atol:
        failures.append(f"final coefficients differ by {final_diff:.2e}")
    return tuple(failures)
