"""The data: ``y = sin(x)`` on evenly spaced points, served one optimizer step per batch.

Training batches come from :class:`litpoly.data.StepLoader`: by default the full batch of all points every
step, as in the seed's ``for t in range(2000)`` loop; with ``batch_size`` set, shuffled mini-batch slices of
the same tensors. Validation, test and predict use the midpoints between neighbouring training points, so the
reported metrics come from points the model never trained on.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torch import Tensor

from litpoly.data.step_loader import StepLoader, on_device, shard

Batch = tuple[Tensor, Tensor]


class SineDataModule(L.LightningDataModule):
    """``y = sin(x)`` on ``num_samples`` evenly spaced points in ``[x_min, x_max]``.

    The points are built once in float64, then cast to the dtype the run trains in and moved to its device
    once, so no step pays a host-to-device copy or a dtype conversion.

    Args:
        num_samples: Number of training points (the seed uses 2000).
        x_min: Left end of the interval.
        x_max: Right end of the interval; must be greater than ``x_min``.
        batch_size: Points per optimizer step. Default: all of them (full batch, as in the seed).
            Mini-batches are shuffled slices, reproducible under the run's seed.
        max_eval_samples: Validation and test use at most this many of the midpoints, evenly spread
            (all 1999 by default; 100 000 of 20 million is plenty for a metric, and keeps a second
            full copy of the data out of memory).

    Example:
        >>> dm = SineDataModule(num_samples=5, x_min=0.0, x_max=1.0)
        >>> dm.train_x.tolist()
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """

    def __init__(
        self,
        num_samples: PositiveInt = 2000,
        x_min: float = -math.pi,
        x_max: float = math.pi,
        batch_size: PositiveInt | None = None,
        max_eval_samples: PositiveInt = 100_000,
    ) -> None:
        super().__init__()
        if num_samples < 3:
            raise ValueError(f"Expected `data.num_samples` >= 3 (R² needs 2 held-out midpoints), got {num_samples}")
        if max_eval_samples < 2:
            raise ValueError(f"Expected `data.max_eval_samples` >= 2 (R² needs 2 points), got {max_eval_samples}")
        if not (math.isfinite(x_min) and math.isfinite(x_max) and x_min < x_max):
            raise ValueError(f"Expected `data.x_min` < `data.x_max` (both finite), got {x_min} and {x_max}")
        self.save_hyperparameters()
        self.num_samples = num_samples
        self.x_min, self.x_max = x_min, x_max
        self.batch_size = batch_size
        self.max_eval_samples = max_eval_samples

    @property
    def train_x(self) -> Tensor:
        """The training inputs in float64 on the CPU: the exact points any reference computation should use."""
        return torch.linspace(self.x_min, self.x_max, self.num_samples, dtype=torch.float64)

    @property
    def eval_x(self) -> Tensor:
        """The held-out inputs in float64: midpoints between neighbouring training points
        (at most ``max_eval_samples`` of them, evenly spread)."""
        x = self.train_x  # at least 3 points (checked in __init__), so at least 2 midpoints
        count = x.shape[0] - 1
        if count <= self.max_eval_samples:
            return (x[:-1] + x[1:]) / 2
        index = torch.linspace(0, count - 1, self.max_eval_samples).round().long()
        return (x[index] + x[index + 1]) / 2  # only the midpoints kept: no second copy of all the points

    @staticmethod
    def target(x: Tensor) -> Tensor:
        """The function being fitted."""
        return torch.sin(x)

    def _points(self, x: Tensor) -> Batch:
        """``(x, sin x)``: targets computed in float64, then both moved to where the run computes, once."""
        x, y = on_device(self.trainer, x, self.target(x))
        return x, y

    def train_dataloader(self) -> StepLoader:
        if self.trainer is None:
            raise RuntimeError("train_dataloader() needs a Trainer: the loader serves the Trainer's run")
        return StepLoader.for_training(self.trainer, *self._points(self.train_x), batch_size=self.batch_size)

    def val_dataloader(self) -> StepLoader:
        # One batch: this process's part of the held-out points (metrics are summed across processes).
        return StepLoader(*shard(self.trainer, *self._points(self.eval_x)))

    def test_dataloader(self) -> StepLoader:
        return self.val_dataloader()

    def predict_dataloader(self) -> StepLoader:
        # Not sharded: the prediction writer on process 0 writes every point.
        return StepLoader(*self._points(self.eval_x))
