"""The two moons: points on two interleaving half circles, made in memory and served in shuffled mini-batches."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import PositiveInt

from litpoly.data.step_loader import StepLoader, on_device, shard


def make_moons(num_samples: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``num_samples`` points on two interleaving half circles (label 0: upper, 1: lower), with Gaussian noise."""
    rng = np.random.default_rng(seed)
    upper = num_samples // 2
    angles = rng.uniform(0.0, math.pi, num_samples)
    x = np.where(np.arange(num_samples)[:, None] < upper,
                 np.stack([np.cos(angles), np.sin(angles)], axis=1),
                 np.stack([1.0 - np.cos(angles), 0.5 - np.sin(angles)], axis=1))  # fmt: skip
    labels = (np.arange(num_samples) >= upper).astype(np.float64)
    order = rng.permutation(num_samples)
    return x[order] + rng.normal(0.0, noise, x.shape), labels[order]


class TwoMoonsDataModule(L.LightningDataModule):
    """Two-moons points, split into training and validation sets, served in shuffled mini-batches.

    Args:
        num_samples: Number of points in all.
        noise: Standard deviation of the Gaussian noise added to each coordinate.
        val_fraction: Share of the points held out for validation, test and predict.
        batch_size: Training points per step.
        data_seed: Seed of the points themselves (the run's seed shuffles the batches).
    """

    def __init__(
        self,
        num_samples: PositiveInt = 1000,
        noise: float = 0.1,
        val_fraction: float = 0.2,
        batch_size: PositiveInt = 128,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"Expected `data.val_fraction` between 0 and 1, got {val_fraction}")
        self.save_hyperparameters()
        x, y = make_moons(num_samples, noise, data_seed)
        split = num_samples - max(1, round(val_fraction * num_samples))
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.split = split
        self.batch_size = batch_size

    def train_dataloader(self) -> StepLoader:
        assert self.trainer is not None
        points = on_device(self.trainer, self.x[: self.split], self.y[: self.split])
        return StepLoader.for_training(self.trainer, *points, batch_size=self.batch_size)

    def val_dataloader(self) -> StepLoader:
        return StepLoader(*shard(self.trainer, *on_device(self.trainer, self.x[self.split :], self.y[self.split :])))

    def test_dataloader(self) -> StepLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> StepLoader:
        return StepLoader(*on_device(self.trainer, self.x[self.split :], self.y[self.split :]))
