"""The data: ``y = sin(x)`` on evenly spaced points, served one optimizer step per batch.

Training is counted in optimizer steps (``trainer.max_steps``). The train loader is one epoch of
exactly ``max_steps`` batches: by default the full batch of all points every step, as in the seed's
``for t in range(2000)`` loop; with ``batch_size`` set, shuffled mini-batch slices of the same
tensors. No per-sample ``Dataset``/``collate``: that costs ~20x a whole step on 2000 points.

Validation, test and predict use the midpoints between neighbouring training points, so the
reported metrics come from points the model never trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import torch
from jsonargparse.typing import PositiveInt
from torch import Tensor

Batch = tuple[Tensor, Tensor]


class StepLoader:
    """An iterable of ``num_steps`` ``(x, y)`` batches sliced from tensors that already sit on the device.

    Args:
        x: Inputs, shape ``(N,)``.
        y: Targets, shape ``(N,)``.
        num_steps: How many batches one pass yields (its ``len``).
        batch_size: ``None`` for the full batch every step; otherwise the size of each shuffled slice.
            A new permutation is drawn whenever the previous one is used up; the last slice of a
            permutation may be shorter.
        generator: Random source for the permutations (seeded by the data module).

    Example:
        >>> loader = StepLoader(torch.arange(5.0), torch.arange(5.0), num_steps=3)
        >>> len(loader), [b[0].shape[0] for b in loader]
        (3, [5, 5, 5])
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        num_steps: int,
        batch_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.x, self.y = x, y
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.generator = generator

    def __len__(self) -> int:
        return self.num_steps

    def __iter__(self) -> Iterator[Batch]:
        n = self.x.shape[0]
        if self.batch_size is None or self.batch_size >= n:
            for _ in range(self.num_steps):
                yield self.x, self.y
            return
        served = 0
        while served < self.num_steps:
            # The permutation is drawn on the CPU generator, then moved: device generators differ per backend.
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
            for start in range(0, n, self.batch_size):
                if served == self.num_steps:
                    return
                idx = order[start : start + self.batch_size]
                yield self.x[idx], self.y[idx]
                served += 1


class SineDataModule(L.LightningDataModule):
    """``y = sin(x)`` on ``num_samples`` evenly spaced points in ``[x_min, x_max]``.

    The points are built once in float64, then cast to the trainer's precision and moved to its
    device once, so no step pays a host-to-device copy or a dtype conversion.

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
        midpoints = (x[:-1] + x[1:]) / 2
        if midpoints.shape[0] > self.max_eval_samples:
            index = torch.linspace(0, midpoints.shape[0] - 1, self.max_eval_samples).round().long()
            midpoints = midpoints[index]
        return midpoints

    @staticmethod
    def target(x: Tensor) -> Tensor:
        """The function being fitted."""
        return torch.sin(x)

    def _on_device(self, x: Tensor, shard: bool = True) -> Batch:
        """Compute the targets in float64, then cast to the dtype the trainer feeds the model and move
        both to its device, once. Under DDP, keep this process's shard only."""
        y = self.target(x)
        if self.trainer is None:  # used outside a Trainer (tests, notebooks): the model's default dtype
            return x.float(), y.float()
        # The precision plugin knows the input dtype (float64 under "64-true", float32 under "32-true"
        # and the mixed modes); casting here makes Lightning's own per-step conversion a no-op.
        dtype = self.trainer.precision_plugin.convert_input(torch.zeros(())).dtype
        device = self.trainer.strategy.root_device
        if shard and self.trainer.world_size > 1:
            # Under DDP each process takes a contiguous, disjoint shard: no DistributedSampler, so no
            # padding with duplicated points when the count does not divide evenly.
            x = torch.tensor_split(x, self.trainer.world_size)[self.trainer.global_rank]
            y = torch.tensor_split(y, self.trainer.world_size)[self.trainer.global_rank]
        return x.to(device, dtype), y.to(device, dtype)

    def train_dataloader(self) -> StepLoader:
        if self.trainer is None:
            raise RuntimeError("train_dataloader() needs a Trainer: the loader serves `trainer.max_steps` batches")
        max_steps = self.trainer.max_steps
        if max_steps is None or max_steps <= 0:
            raise ValueError(f"Expected `trainer.max_steps` to be a positive integer, got {max_steps}")
        x, y = self._on_device(self.train_x)
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, (1,)).item()))
        return StepLoader(x, y, num_steps=max_steps, batch_size=self.batch_size, generator=generator)

    def _eval_loader(self) -> StepLoader:
        x, y = self._on_device(self.eval_x)
        return StepLoader(x, y, num_steps=1)

    def val_dataloader(self) -> StepLoader:
        return self._eval_loader()

    def test_dataloader(self) -> StepLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> StepLoader:
        # Not sharded: the prediction writer on process 0 writes every point.
        return StepLoader(*self._on_device(self.eval_x, shard=False), num_steps=1)
