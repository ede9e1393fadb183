"""The second problem: two interleaving half-moons, classified by a small MLP.

It is deliberately unlike the sine example — 2-D inputs, mini-batches, a *mean* loss, Adam, a schedule in
epochs, a classification metric — and it is trained through the same ``scripts/train.py`` with no change to
the run layer, so the generic tests run against both problems. It is also the worked example of the README's
"Start your own project": a model, a data module and one config (``tests/twomoons.yaml``)::

    PYTHONPATH=tests python scripts/train.py fit --config tests/twomoons.yaml
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy

from litpoly.data.step_loader import StepLoader, on_device, shard

Batch = tuple[Tensor, Tensor]


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


class TwoMoonsClassifier(L.LightningModule):
    """A small MLP that tells the two moons apart: mean binary cross-entropy, Adam, accuracy.

    Args:
        hidden: Width of the two hidden layers.
        lr: Adam's learning rate.
    """

    def __init__(self, hidden: PositiveInt = 32, lr: PositiveFloat = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
        )
        self.example_input_array = torch.zeros(8, 2)  # an input of the right shape: model summary and export
        self.val_accuracy = BinaryAccuracy()
        self.test_accuracy = BinaryAccuracy()

    def forward(self, x: Tensor) -> Tensor:
        """The logit of label 1 for each point."""
        return self.net(x).squeeze(-1)

    def _shared_step(self, batch: Batch, stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)  # the mean over the batch
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        if stage != "train":
            accuracy = self.val_accuracy if stage == "val" else self.test_accuracy
            accuracy.update(logits.sigmoid(), y.long())
            self.log(f"{stage}/acc", accuracy, prog_bar=True)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        return {"x": x, "target": y, "probability": self(x).sigmoid()}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
