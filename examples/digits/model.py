"""A small MLP that reads 8x8 digits: dropout, mean cross-entropy, AdamW with a OneCycleLR schedule, accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jsonargparse.typing import ClosedUnitInterval, PositiveFloat, PositiveInt
from lightning import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

Batch = tuple[Tensor, Tensor]


class DigitsClassifier(LightningModule):
    """Tells the ten digits apart from their 64 pixels.

    Args:
        hidden: Width of the hidden layer.
        dropout: Share of the hidden units dropped at each training step (a random draw every step: what an
            exact resume must repeat).
        lr: AdamW's peak learning rate under the OneCycleLR schedule.
        weight_decay: AdamW's weight decay.
    """

    def __init__(
        self,
        hidden: PositiveInt = 64,
        dropout: ClosedUnitInterval = 0.1,
        lr: PositiveFloat = 0.01,
        weight_decay: float = 0.01,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr, self.weight_decay = (
            float(lr),
            float(weight_decay),
        )  # plain floats: the optimizer's state is checkpointed
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
        )
        self.example_input_array = torch.zeros(4, 1, 8, 8)  # an input of the right shape: summary and export
        self.val_accuracy = MulticlassAccuracy(num_classes=10, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes=10, average="micro")

    def forward(self, images: Tensor) -> Tensor:
        """The ten digits' logits for each image."""
        logits: Tensor = self.net(images)
        return logits

    def _shared_step(self, batch: Batch, stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)  # the mean over the batch
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", sync_dist=stage != "train")
        if stage != "train":
            accuracy = self.val_accuracy if stage == "val" else self.test_accuracy
            accuracy.update(logits, labels)
            self.log(f"{stage}/acc", accuracy, prog_bar=True)
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        images, labels = batch
        probabilities = self(images).softmax(-1)
        return {"target": labels, "prediction": probabilities.argmax(-1), "confidence": probabilities.amax(-1)}

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)  # sets up the training loader to count its batches
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.lr, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
