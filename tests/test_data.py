"""The data module: the points, their dtype and device, and the step loader."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from litpoly.data import SineDataModule, StepLoader


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
    x, y = SineDataModule(num_samples=10)._on_device(SineDataModule(num_samples=10).train_x)
    assert x.dtype == y.dtype == torch.float32 and x.device.type == "cpu"
    torch.testing.assert_close(y, torch.sin(x), rtol=0, atol=1e-7)


def test_full_batch_loader_yields_the_same_tensors_every_step() -> None:
    x, y = torch.arange(6.0), torch.arange(6.0) * 2
    batches = list(StepLoader(x, y, num_steps=4))
    assert len(batches) == 4
    assert all(bx is x and by is y for bx, by in batches)  # no copies per step


def test_mini_batches_cover_every_point_once_per_pass_and_are_reproducible() -> None:
    x = torch.arange(10.0)
    make = lambda: StepLoader(x, -x, num_steps=6, batch_size=4, generator=torch.Generator().manual_seed(0))  # noqa: E731
    batches = list(make())
    assert [b[0].shape[0] for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(torch.cat([b[0] for b in batches[:3]]).tolist()) == x.tolist()
    assert all(torch.equal(by, -bx) for bx, by in batches)  # inputs and targets stay paired
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, make(), strict=True))
    assert not torch.equal(batches[0][0], torch.arange(4.0))  # actually shuffled


@pytest.mark.parametrize(("x_min", "x_max"), [(1.0, 1.0), (2.0, 1.0), (0.0, math.inf)])
def test_empty_or_reversed_range_is_refused(x_min: float, x_max: float) -> None:
    with pytest.raises(ValueError, match=r"data\.x_min"):
        SineDataModule(x_min=x_min, x_max=x_max)
