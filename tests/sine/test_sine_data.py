"""The data module: the points, their dtype and device, and the step loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sinefit.data import SineDataModule


def test_training_points_are_the_seeds_linspace() -> None:
    dm = SineDataModule()
    x = dm.train_x
    assert x.shape == (2000,) and x.dtype == torch.float64
    np.testing.assert_allclose(x.numpy(), np.linspace(-math.pi, math.pi, 2000), rtol=0, atol=1e-15)
    np.testing.assert_allclose(dm.target(x).numpy(), np.sin(x.numpy()), rtol=0, atol=1e-15)


def test_held_out_points_are_the_midpoints() -> None:
    dm = SineDataModule(num_samples=5, x_min=0.0, x_max=1.0)
    assert dm.eval_x.tolist() == [0.125, 0.375, 0.625, 0.875]
    # None of them is a training point.
    assert not set(dm.eval_x.tolist()) & set(dm.train_x.tolist())
    # Capped: an evenly spread subset of the midpoints, both ends included.
    full = SineDataModule(num_samples=1001, x_min=0.0, x_max=1.0).eval_x
    capped = SineDataModule(num_samples=1001, x_min=0.0, x_max=1.0, max_eval_samples=5).eval_x
    assert len(full) == 1000 and len(capped) == 5 and set(capped.tolist()) <= set(full.tolist())
    assert capped[0] == full[0] and capped[-1] == full[-1]
    assert torch.diff(capped).max() - torch.diff(capped).min() <= 1.01 * (full[1] - full[0])


def test_outside_a_trainer_batches_are_float32_cpu() -> None:
    dm = SineDataModule(num_samples=10)
    x, y = dm._points(dm.train_x)
    assert x.dtype == y.dtype == torch.float32 and x.device.type == "cpu"
    torch.testing.assert_close(y, torch.sin(x), rtol=0, atol=1e-7)


@pytest.mark.parametrize(("x_min", "x_max"), [(1.0, 1.0), (2.0, 1.0), (0.0, math.inf)])
def test_empty_or_reversed_range_is_refused(x_min: float, x_max: float) -> None:
    with pytest.raises(ValueError, match=r"data\.x_min"):
        SineDataModule(x_min=x_min, x_max=x_max)
