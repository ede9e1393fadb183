"""The numpy reference itself: numpy only, the closed-form optimum, the stability limit, torch's RMSprop."""

from __future__ import annotations

import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch

from helpers import REPO
from sinefit import PolynomialRegressor, SineDataModule, reference

X = np.linspace(-np.pi, np.pi, 2000)
Y = np.sin(X)


def test_reference_module_imports_numpy_only() -> None:
    """Loaded on its own (not through the package, whose __init__ imports torch), it must not pull in torch."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('ref', {str(REPO / 'src/sinefit/reference.py')!r})\n"
        "module = sys.modules['ref'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "print(sorted(m for m in ('torch', 'lightning', 'torchmetrics') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_closed_form_optimum_matches_the_known_values() -> None:
    w, sse = reference.closed_form(X, Y)
    np.testing.assert_allclose(w, [0.0, 0.856740843, 0.0, -0.0933303890], atol=1e-9)
    assert sse == pytest.approx(8.8171654, abs=1e-7)
    # It is the floor: nudging any coefficient raises the loss.
    for k in range(4):
        assert reference.sum_squared_error(X, Y, w + 1e-4 * np.eye(4)[k]) > sse


def test_manual_gradient_is_the_derivative_of_the_loss() -> None:
    """One SGD step of the reference against a central finite difference of its own loss."""
    w0 = np.array([0.3, -0.2, 0.1, 0.05])
    lr = 1e-9
    step = reference.run("sgd", X, Y, w0, lr, num_steps=1, record_every=1)
    gradient = (w0 - step.final_coefficients) / lr
    h = 1e-6
    numeric = [
        (reference.sum_squared_error(X, Y, w0 + h * e) - reference.sum_squared_error(X, Y, w0 - h * e)) / (2 * h)
        for e in np.eye(4)
    ]
    np.testing.assert_allclose(gradient, numeric, rtol=1e-6)
    assert step.losses[0] == pytest.approx(reference.sum_squared_error(X, Y, w0), rel=1e-15)


def test_rmsprop_follows_torch_optim_rmsprop() -> None:
    """Same gradients fed to torch.optim.RMSprop (float64, non-default alpha and eps): the updates agree
    to rounding for 500 steps, all before the first gradient sign change (after it, see test_parity)."""
    w0, lr, alpha, eps = [1.0, -1.0, 1.0, -1.0], 1e-3, 0.9, 1e-6
    replay = reference.run("rmsprop", X, Y, w0, lr, 500, alpha=alpha, eps=eps, record_every=1)
    assert replay.first_sign_change is None
    w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.RMSprop([w], lr=lr, alpha=alpha, eps=eps)
    vander = torch.from_numpy(reference.vandermonde(X, 3))
    for t in range(500):
        np.testing.assert_allclose(w.detach().numpy(), replay.coefficients[t], rtol=0, atol=1e-12)
        optimizer.zero_grad()
        ((vander @ w - torch.from_numpy(Y)) ** 2).sum().backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    np.testing.assert_allclose(w.detach().numpy(), replay.final_coefficients, rtol=0, atol=1e-12)


def test_stability_limit_value() -> None:
    assert reference.sgd_stability_limit(X) == pytest.approx(3.56e-6, rel=2e-3)


@pytest.mark.parametrize(("factor", "stable"), [(0.98, True), (1.02, False)])
def test_sgd_converges_just_below_the_limit_and_diverges_just_above(factor: float, stable: bool) -> None:
    lr = factor * reference.sgd_stability_limit(X)
    w0 = [0.3, -0.2, 0.1, 0.05]
    start = reference.sum_squared_error(X, Y, w0)
    replay = reference.run("sgd", X, Y, w0, lr, 1000, record_every=1)
    # The Lightning model, in float64, on the same side of the limit.
    model = PolynomialRegressor(lr=lr, init_coefficients=w0)
    L.Trainer(
        max_steps=1000, precision="64-true", accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    ).fit(model, SineDataModule())  # fmt: skip
    lightning_loss = reference.sum_squared_error(X, Y, model.coefficients.detach().numpy())
    if stable:
        assert replay.final_loss < 9.0 < start and lightning_loss < 9.0
    else:
        assert replay.final_loss > 1e6 * start and lightning_loss > 1e6 * start
