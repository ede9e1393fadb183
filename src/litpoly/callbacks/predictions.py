"""``predict`` writes what ``predict_step`` returns into the run folder, as a CSV table anyone can read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from litpoly.console import say


def prediction_table(predictions: list[Any]) -> tuple[list[str], np.ndarray]:
    """Column names and rows (one per sample) from the batches ``predict_step`` returned.

    A batch is a tensor (columns ``prediction``) or a dict of tensors (one column per key); a tensor with
    several values per sample gives one column per value (``logits_0``, ``logits_1``, …).

    Example:
        >>> batch = {"x": torch.tensor([1.0, 2.0]), "p": torch.tensor([[0.5, 0.5], [0.25, 0.75]])}
        >>> names, rows = prediction_table([batch])
        >>> names, rows.tolist()
        (['x', 'p_0', 'p_1'], [[1.0, 0.5, 0.5], [2.0, 0.25, 0.75]])
    """
    names: list[str] = []
    columns: list[Tensor] = []
    batches = [b if isinstance(b, Mapping) else {"prediction": b} for b in predictions]
    for key in batches[0]:
        values = torch.cat([torch.as_tensor(b[key]).detach().double().cpu().reshape(len(b[key]), -1) for b in batches])
        names += [str(key)] if values.shape[1] == 1 else [f"{key}_{i}" for i in range(values.shape[1])]
        columns.append(values)
    return names, torch.cat(columns, dim=1).numpy()


class PredictionWriter(BasePredictionWriter):
    """Writes ``predict``'s output to ``predictions.csv`` in the run folder (one row per sample, 17 digits).

    Args:
        filename: Name of the CSV file inside the run folder.
    """

    def __init__(self, filename: str = "predictions.csv") -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if not trainer.is_global_zero or not predictions:
            return
        names, table = prediction_table(predictions)
        folder = Path(trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.filename
        np.savetxt(path, table, delimiter=",", header=",".join(names), comments="", fmt="%.17g")
        say(f"Predictions for {table.shape[0]} samples written to {path}")
