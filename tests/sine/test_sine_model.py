"""The model: the polynomial it computes and the gradient one training step follows."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from sinefit import PolynomialRegressor, SineDataModule
from sinefit.polynomial import format_polynomial


def test_forward_is_the_polynomial() -> None:
    model = PolynomialRegressor(init_coefficients=[0.5, -1.0, 2.0, 0.25])
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    expected = torch.tensor([0.5 - 1.0 * v + 2.0 * v**2 + 0.25 * v**3 for v in x.tolist()])
    torch.testing.assert_close(model(x), expected)  # training: powers times coefficients
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)  # evaluation: Horner's rule


def test_degree_sets_the_number_of_coefficients() -> None:
    model = PolynomialRegressor(degree=5)
    assert model.coefficients.shape == (6,)
    assert list(model.coefficient_dict()) == ["a", "b", "c", "d", "e", "f"]
    quadratic = PolynomialRegressor(degree=2, init_coefficients=[1.0, 0.0, -1.0])
    torch.testing.assert_close(quadratic(torch.tensor([2.0])), torch.tensor([-3.0]))


def test_a_constant_trains_to_the_mean(tmp_path: object) -> None:
    """Degree 0: the empty matrix of powers still trains (the optimum is the mean of y, 0 for sin)."""
    model = PolynomialRegressor(degree=0, optimizer="rmsprop", init_coefficients=[0.5])
    trainer = L.Trainer(
        max_steps=800, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, SineDataModule())
    assert abs(model.coefficients.item()) < 5e-3


def test_random_init_follows_the_seed_and_is_kept() -> None:
    torch.manual_seed(7)
    first = PolynomialRegressor()
    torch.manual_seed(7)
    again = PolynomialRegressor()
    torch.manual_seed(8)
    other = PolynomialRegressor()
    assert torch.equal(first.coefficients, again.coefficients)
    assert not torch.equal(first.coefficients, other.coefficients)
    assert torch.equal(first.initial_coefficients, first.coefficients)


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_default_lr_follows_the_optimizer(optimizer: str) -> None:
    assert PolynomialRegressor(optimizer=optimizer).lr == {"sgd": 1e-6, "rmsprop": 1e-3}[optimizer]  # type: ignore[arg-type]
    assert PolynomialRegressor(optimizer=optimizer, lr=0.5).lr == 0.5  # type: ignore[arg-type]


def test_one_training_step_follows_the_analytic_gradient(tmp_path: object) -> None:
    """One real SGD step through the Trainer in float64: w1 = w0 - lr * 2·Xᵀ(Xw0 − y)."""
    w0 = np.array([0.3, -0.2, 0.1, 0.05])
    lr = 1e-7
    model = PolynomialRegressor(lr=lr, init_coefficients=w0.tolist(), parity=False)
    trainer = L.Trainer(
        max_steps=1, precision="64-true", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(model, SineDataModule())
    x = np.linspace(-np.pi, np.pi, 2000)
    vander = np.vander(x, 4, increasing=True)
    # A float64 run starts from exactly the numbers given (no float32 rounding on the way).
    assert model.initial_coefficients.tolist() == w0.tolist()
    gradient = 2 * vander.T @ (vander @ w0 - np.sin(x))
    taken = (w0 - model.coefficients.detach().numpy()) / lr
    np.testing.assert_allclose(taken, gradient, rtol=1e-8)


def test_wrong_number_of_initial_coefficients_is_refused() -> None:
    with pytest.raises(ValueError, match=r"model.init_coefficients.*4 finite numbers \(a, b, c, d\)"):
        PolynomialRegressor(init_coefficients=[1.0, 2.0])


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("nan"), float("inf")])
def test_non_positive_or_non_finite_lr_is_refused(lr: float) -> None:
    with pytest.raises(ValueError, match=r"model\.lr"):
        PolynomialRegressor(lr=lr)


def test_result_line_matches_the_seed_format() -> None:
    assert format_polynomial([1.0, 2.5, -3.0, 0.125]) == "y = 1.0 + 2.5 x + -3.0 x^2 + 0.125 x^3"
