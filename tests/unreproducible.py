"""Two projects that are not reproducible, for ``scripts/check.py`` to catch (tests/run/test_check.py).

Each is the two-moons problem (``examples/twomoons/``) with one source of randomness that no seed reaches:

- :class:`NoisyClassifier` shifts its inputs at every training step by noise read from ``os.urandom``;
- :class:`JitteredMoons` serves the points through a standard ``DataLoader`` whose worker processes shift each
  sample by an augmentation from ``np.random.default_rng()`` — a generator without a seed, drawn from the OS.

Either one picked by class path over the two-moons config (this module is found on ``PYTHONPATH``)::

    export PYTHONPATH=tests
    python scripts/check.py --config examples/twomoons/config.yaml --model unreproducible.NoisyClassifier
    python scripts/check.py --config examples/twomoons/config.yaml --data unreproducible.JitteredMoons
"""

from __future__ import annotations

import os

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from twomoons import TwoMoonsClassifier, make_moons
from twomoons.model import Batch


def urandom_like(x: Tensor) -> Tensor:
    """Uniform noise in [-1, 1) of ``x``'s shape and dtype, from the operating system's entropy."""
    raw = torch.frombuffer(bytearray(os.urandom(4 * x.numel())), dtype=torch.int32)
    return (raw.to(x.dtype) / 2**31).reshape(x.shape).to(x.device)


class NoisyClassifier(TwoMoonsClassifier):
    """The two-moons MLP, its training inputs shifted by ``noise`` times noise from ``os.urandom`` every step.

    Args:
        hidden: Width of the two hidden layers.
        lr: Adam's learning rate.
        noise: Size of the shift.
    """

    def __init__(self, hidden: PositiveInt = 32, lr: PositiveFloat = 0.01, noise: PositiveFloat = 1e-3) -> None:
        super().__init__(hidden=hidden, lr=lr)
        self.noise = noise

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        x, y = batch
        return super().training_step((x + self.noise * urandom_like(x), y), batch_idx)


class JitteredPoints(Dataset[tuple[Tensor, Tensor]]):
    """Points and labels, each point shifted by Gaussian jitter when it is read, from a generator without a seed."""

    def __init__(self, x: np.ndarray, y: np.ndarray, jitter: float) -> None:
        self.x, self.y, self.jitter = x, y, jitter

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        shift = np.random.default_rng().normal(0.0, self.jitter, self.x.shape[1])  # no seed: the OS's entropy
        point, label = self.x[index] + shift, self.y[index]
        return torch.tensor(point, dtype=torch.float32), torch.tensor(label, dtype=torch.float32)


class JitteredMoons(L.LightningDataModule):
    """Two-moons points in a standard ``DataLoader`` with worker processes, the training points augmented.

    Args:
        num_samples: Number of points in all (a fifth held out).
        batch_size: Training points per step.
        num_workers: DataLoader worker processes, where the augmentation is drawn.
        jitter: Standard deviation of the augmentation.
        data_seed: Seed of the points themselves.
    """

    def __init__(
        self,
        num_samples: PositiveInt = 1000,
        batch_size: PositiveInt = 128,
        num_workers: NonNegativeInt = 2,
        jitter: PositiveFloat = 0.05,
        data_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        x, y = make_moons(num_samples, 0.1, data_seed)
        split = num_samples - num_samples // 5
        self.train_set = JitteredPoints(x[:split], y[:split], jitter)
        self.val_x = torch.tensor(x[split:], dtype=torch.float32)
        self.val_y = torch.tensor(y[split:], dtype=torch.float32)

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        workers = self.hparams.num_workers
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, num_workers=workers,
                          persistent_workers=workers > 0)  # fmt: skip

    def val_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return DataLoader(list(zip(self.val_x, self.val_y, strict=True)), batch_size=len(self.val_y))
