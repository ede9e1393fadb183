"""A training loader for data that fits on the device: batches are slices of tensors already there.

A ``DataLoader`` over a ``Dataset`` of small samples collates every batch from single samples on the host, then
copies it to the device; for a model that is itself cheap, that costs more than the step. :class:`StepLoader`
keeps the whole dataset on the training device, in the dtype the model trains in, and serves a batch as a
slice of it (full batch: the very same tensors every step, no copy at all).

It is what a training loader must be in a template that promises exact resumes and DDP:

- **Resumable.** It follows Lightning's stateful-dataloader protocol (``state_dict`` / ``load_state_dict``):
  a checkpoint records how far the loader got, and a resumed run goes on with the very next batch, in the
  same shuffled order, as if it had never stopped.
- **Reproducible.** The order of pass ``p`` over the data is a permutation seeded by the run's seed and ``p``
  alone, so it does not depend on what else drew random numbers before, and any position can be rebuilt.
- **DDP-exact.** Each batch is split into equal, contiguous shards, one per process (no sampler padding with
  duplicated samples). DDP averages the processes' gradients: with equal shards that average is the gradient a
  single process gets for a mean loss, and for a sum loss once each process multiplies its loss by the number
  of processes. A batch that cannot be split evenly would weight samples unequally, so it is refused.
- **Cheap in steps.** Lightning's epoch boundary costs more than a small model's step. A run that counts
  steps (``trainer.max_steps`` without ``trainer.max_epochs``) gets all its steps in one Lightning epoch,
  passing over the data as often as needed; a run that counts epochs gets one pass per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
from torch import Tensor

from litpoly.errors import SettingError

Batch = tuple[Tensor, ...]

#: Mixes the pass number into the seed (the golden ratio's 64-bit constant), so that pass p of seed s and
#: pass 0 of seed s + p get unrelated permutations.
_PASS_STRIDE = 0x9E3779B97F4A7C15


class StepLoader:
    """Batches sliced from tensors on the device: the full batch every step, or shuffled mini-batches.

    Args:
        *tensors: The dataset, e.g. ``x, y``; all have the same first dimension, the number of samples.
        batch_size: Samples per step. Default (or at least the number of samples): all of them, every step.
        shuffle: Visit the samples in a new random order on every pass (mini-batches only). The last batch of
            a pass may be shorter.
        seed: Seeds the order: pass ``p`` uses a permutation drawn from ``(seed, p)`` alone.
        steps_per_epoch: Batches per Lightning epoch (the loader's ``len``). Default: one pass over the data.
        rank: This process's index among ``world_size`` processes.
        world_size: Under DDP, each batch is split into this many equal, contiguous shards.

    Raises:
        SettingError: A training batch cannot be split evenly across ``world_size`` processes.

    Example:
        >>> x = torch.arange(5.0)
        >>> loader = StepLoader(x, 2 * x, batch_size=2, shuffle=False, steps_per_epoch=4)
        >>> [b[0].tolist() for b in loader]
        [[0.0, 1.0], [2.0, 3.0], [4.0], [0.0, 1.0]]
        >>> loader.state_dict()
        {'position': 4, 'seed': 0}
    """

    def __init__(
        self,
        *tensors: Tensor,
        batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        steps_per_epoch: int | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError("Expected one or more tensors with the same number of samples (first dimension)")
        self.tensors = tensors
        self.num_samples = n = tensors[0].shape[0]
        self.batch_size = None if batch_size is None or batch_size >= n else batch_size
        self.batches_per_pass = 1 if self.batch_size is None else math.ceil(n / self.batch_size)
        self.steps_per_epoch = steps_per_epoch or self.batches_per_pass
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.position = 0  # batches served since the start of the run: the loader's whole state, with the seed
        self._check_even_split()
        self._full_batch = self._shard(tensors) if self.batch_size is None else None
        self._order: tuple[int, Tensor] | None = None  # (pass, its permutation on the device)

    @classmethod
    def for_training(
        cls, trainer: L.Trainer, *tensors: Tensor, batch_size: int | None = None, shuffle: bool = True
    ) -> StepLoader:
        """The loader for ``trainer``'s run: its seed, its process's shard, and one epoch of all its steps
        when it counts steps only (``max_epochs`` unset), else one pass per epoch."""
        counts_steps = trainer.max_epochs in (None, -1) and trainer.max_steps > 0
        return cls(
            *tensors,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=torch.initial_seed(),  # the run's seed (`seed_everything`), the same on every process
            steps_per_epoch=trainer.max_steps if counts_steps else None,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
        )

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[Batch]:
        # From where the loader stands (0, or a resumed position) to the end of that epoch.
        end = (self.position // self.steps_per_epoch + 1) * self.steps_per_epoch
        while self.position < end:
            batch = self._batch(self.position)
            self.position += 1  # counted before the batch is used: a checkpoint taken during the step resumes after it
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint records: how many batches were served, and the seed of their order."""
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Go on from a checkpoint's :meth:`state_dict`: the next batch is the one that would have come next."""
        self.position, self.seed = int(state_dict["position"]), int(state_dict["seed"])
        self._order = None

    def _batch(self, position: int) -> Batch:
        if self._full_batch is not None:
            return self._full_batch
        assert self.batch_size is not None
        pass_index, index_in_pass = divmod(position, self.batches_per_pass)
        start = index_in_pass * self.batch_size
        order = self._pass_order(pass_index)
        return self._shard(tuple(t[order[start : start + self.batch_size]] for t in self.tensors))

    def _pass_order(self, pass_index: int) -> Tensor:
        if self._order is None or self._order[0] != pass_index:
            device = self.tensors[0].device
            if self.shuffle:
                # Drawn on the CPU (device generators differ by backend), then moved once per pass.
                seed = (self.seed + pass_index * _PASS_STRIDE) % 2**63
                order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(seed)).to(device)
            else:
                order = torch.arange(self.num_samples, device=device)
            self._order = (pass_index, order)
        return self._order[1]

    def _shard(self, batch: Batch) -> Batch:
        if self.world_size == 1:
            return batch
        return tuple(torch.tensor_split(t, self.world_size)[self.rank] for t in batch)

    def _check_even_split(self) -> None:
        if self.world_size == 1:
            return
        sizes = [self.num_samples] if self.batch_size is None else [self.batch_size, self.num_samples % self.batch_size]
        uneven = [size for size in sizes if size % self.world_size]
        if uneven:
            raise SettingError(
                f"Expected every training batch to split evenly across the {self.world_size} processes, but a batch "
                f"of {uneven[0]} samples does not ({self.num_samples} samples, batch size "
                f"{self.batch_size or 'all'}). DDP averages the processes' gradients, which equals the one-process "
                f"gradient only when each process has as many samples: choose a number of samples and a batch size "
                f"divisible by {self.world_size}"
            )


def on_device(trainer: L.Trainer | None, *tensors: Tensor) -> Batch:
    """``tensors`` where the run computes: on its device, floating-point ones in the dtype its precision feeds
    the model (float64 under ``64-true``, float32 under ``32-true`` and the mixed modes), so that no step pays a
    copy or a conversion. Outside a Trainer: on the CPU, floating-point ones in float32."""
    if trainer is None:
        return tuple(t.float() if t.is_floating_point() else t for t in tensors)
    dtype = trainer.precision_plugin.convert_input(torch.zeros(())).dtype
    device = trainer.strategy.root_device
    return tuple(t.to(device, dtype) if t.is_floating_point() else t.to(device) for t in tensors)


def shard(trainer: L.Trainer | None, *tensors: Tensor) -> Batch:
    """This process's contiguous part of ``tensors`` (all of them on one process): for evaluation data, where
    shards may differ in size because metrics are summed across processes, not averaged."""
    if trainer is None or trainer.world_size == 1:
        return tensors
    return tuple(torch.tensor_split(t, trainer.world_size)[trainer.global_rank] for t in tensors)
