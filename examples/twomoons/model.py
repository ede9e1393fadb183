"""A small MLP that tells the two moons apart: mean binary cross-entropy, Adam, accuracy."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveFloat, PositiveInt
from torch import Tensor, nn
from torchmetrics.classification import BinaryAccuracy

Batch = tuple[Tensor, Tensor]


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
        logits: Tensor = self.net(x).squeeze(-1)
        return logits

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
        return torch.optim.Adam(self.parameters(), lr=float(self.hparams["lr"]))
