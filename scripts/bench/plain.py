"""The ``plain`` contestant: what a user would write instead of litpoly for the seed's cubic, in plain Lightning.

A ``LightningModule`` of the seed's third cell (``nn.Linear(3, 1)`` on the fixed powers of x, a summed squared
error, SGD or RMSprop), one ``self.log("train/loss", prog_bar=True)`` a step, the full batch as a ``DataLoader``'s
one batch an epoch, under a Trainer with nothing optional (no logger, checkpoint, bar, summary or validation).
Unlike ``bare`` (the example's own model and data module), it shows what the example's model and data cost.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader


class PlainCubic(L.LightningModule):
    """``y = a + b x + c x² + d x³`` as ``nn.Linear`` on ``[x, x², x³]``, started at ``start`` (``[a, b, c, d]``)."""

    def __init__(self, optimizer: str, lr: float, start: list[float]) -> None:
        super().__init__()
        self.optimizer, self.lr = optimizer, lr
        self.linear = nn.Linear(3, 1)
        with torch.no_grad():
            self.linear.bias.fill_(start[0])
            self.linear.weight.copy_(torch.tensor([start[1:]]))

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        powers, y = batch
        loss: Tensor = (self.linear(powers).squeeze(-1) - y).pow(2).sum()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = torch.optim.RMSprop if self.optimizer == "rmsprop" else torch.optim.SGD
        return optimizer(self.parameters(), lr=self.lr)


def full_batch(x: Tensor, y: Tensor) -> DataLoader[Any]:
    """The powers of x and the targets, served whole as the one batch of every epoch."""
    powers = torch.stack([x, x**2, x**3], dim=1)
    return DataLoader([(powers, y)], batch_size=None)  # type: ignore[arg-type]  # a list is a map-style dataset
