"""A standard ``DataLoader`` made resumable: the same dataset and settings, with an order that a checkpoint can record.

:func:`resumable` rebuilds a user's training ``DataLoader`` as a :class:`ResumableLoader` whose sampler is an
:class:`EpochSampler` (``DistributedSampler``'s permutation, seeded by the run's seed and the epoch, able to skip
what an interrupted epoch already served); :func:`why_not_resumable` says why a loader is left as it is.
:class:`~litpoly.callbacks.resume.ExactResume` applies it to every ``fit``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sized
from typing import Any

import lightning as L
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)

from litpoly import compat


def run_seed() -> int:
    """The run's seed as ``seed_everything`` recorded it (Lightning's own ``DistributedSampler`` uses it too)."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


class EpochSampler(DistributedSampler):  # type: ignore[type-arg]
    """``DistributedSampler``'s order — seeded by ``seed`` and the epoch — that can start part-way into an epoch.

    With ``num_replicas=1`` it is the order a single process sees; with ``N`` it is each process's share of the very
    same permutation (every ``N``-th index), so the ``N`` processes' batches of size ``B`` together hold the samples
    of the single process's batch of size ``N·B``.
    """

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        self.start = 0  # indices of the next pass to skip (those served before a resume)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])


class ResumableLoader(DataLoader):  # type: ignore[type-arg]
    """A ``DataLoader`` whose position is saved in the checkpoint: the epoch, and the batches served of it.

    Args:
        dataset, **kwargs: As for ``DataLoader``; ``sampler`` is an :class:`EpochSampler`.
        epoch: The epoch Lightning is in (read when an epoch's iterator is made, since workers fetch indices at
            once and Lightning calls ``set_epoch`` only after making the iterator).
        limit: The batches an epoch trains on, of ``len(self)`` (``--trainer.limit_train_batches``).
    """

    def __init__(
        self, dataset: Any, *, epoch: Callable[[], int], limit: Callable[[int], int] = lambda n: n, **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        self._epoch, self._limit = epoch, limit
        self._served = 0  # batches of the current epoch handed out (before a resume included)
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches served) from a checkpoint

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        epoch, served = self._resume_at or (self._epoch(), 0)
        self._resume_at = None
        sampler.set_epoch(epoch)
        sampler.start = served * (self.batch_size or 1)
        if (set_dataset_epoch := dataset_set_epoch(self.dataset)) is not None:
            set_dataset_epoch(epoch)  # before workers copy the dataset: for random draws seeded by the epoch
        if self.generator is not None:  # the workers' seeds: the run's seed and the epoch, whatever ran before
            self.generator.manual_seed(sampler.seed + epoch)
        self._served = served
        return self._count(super().__iter__())

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._served += 1  # counted before the step uses it: a checkpoint taken during the step resumes after it
            yield batch

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were served."""
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        return {"epoch": sampler.epoch, "served": self._served}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Go on from a checkpoint: the next batch is the one that would have come next (an epoch whose batches
        were all served goes on with the next epoch)."""
        epoch, served = int(state_dict["epoch"]), int(state_dict["served"])
        self._resume_at = (epoch + 1, 0) if served >= self._limit(len(self)) else (epoch, served)


def dataset_set_epoch(dataset: Any) -> Callable[[int], None] | None:
    """The ``set_epoch`` method of ``dataset``, or of the dataset a ``Subset`` (of a ``Subset``...) of it draws from."""
    while not callable(getattr(dataset, "set_epoch", None)) and isinstance(dataset, Subset):
        dataset = dataset.dataset
    method = getattr(dataset, "set_epoch", None)
    return method if callable(method) else None


def why_not_resumable(loader: object) -> str | None:
    """Why ``loader`` cannot be rebuilt as a :class:`ResumableLoader` (``None`` if it can, or needs not be)."""
    if isinstance(loader, compat.Stateful):
        return None  # resumable by its own protocol
    if not isinstance(loader, DataLoader):
        return f"the training loader is a {type(loader).__name__}, with no state_dict/load_state_dict"
    if type(loader) is not DataLoader:
        return f"the training loader is a DataLoader subclass ({type(loader).__name__})"
    if isinstance(loader.dataset, IterableDataset):
        return "the training data is an IterableDataset, whose position only the dataset itself can save"
    sampler = loader.sampler
    plain_random = (
        type(sampler) is RandomSampler and not sampler.replacement and sampler.num_samples == len(loader.dataset)  # type: ignore[arg-type]
    )
    if not (plain_random or type(sampler) is SequentialSampler) or loader.batch_sampler is None:
        return f"the training loader has a sampler of its own ({type(sampler).__name__})"
    if type(loader.batch_sampler) is not BatchSampler:
        return f"the training loader has a batch sampler of its own ({type(loader.batch_sampler).__name__})"
    return None


def resumable(loader: DataLoader, trainer: L.Trainer) -> ResumableLoader:  # type: ignore[type-arg]
    """``loader`` rebuilt as a :class:`ResumableLoader`: the same dataset, batches, workers and collate function, in
    ``DistributedSampler``'s order for this process (see :func:`why_not_resumable` for what can be)."""
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler = EpochSampler(loader.dataset, trainer.world_size, trainer.global_rank, shuffle, run_seed())  # type: ignore[arg-type]
    workers = loader.num_workers
    return ResumableLoader(
        loader.dataset,
        # Epochs whose training batches all ran (Lightning's own `set_epoch` value): the epoch being trained.
        epoch=lambda: trainer.fit_loop.epoch_progress.current.processed,  # type: ignore[attr-defined]
        limit=lambda batches: epoch_limit(batches, trainer.limit_train_batches),
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        generator=torch.Generator(),
        prefetch_factor=loader.prefetch_factor if workers else None,
        persistent_workers=loader.persistent_workers,
        pin_memory_device=loader.pin_memory_device,
        **({"in_order": loader.in_order} if hasattr(loader, "in_order") else {}),  # torch 2.6 and later
    )


def epoch_limit(batches: int, limit: int | float | None) -> int:
    """The batches of ``batches`` an epoch trains on under ``--trainer.limit_train_batches`` (Lightning's rule: a
    count caps them, a fraction keeps that share).

    Example:
        >>> epoch_limit(24, 10), epoch_limit(24, 0.5), epoch_limit(24, 1.0), epoch_limit(24, None)
        (10, 12, 24, 24)
    """
    if limit is None:
        return batches
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def uneven_split(loader: object, world_size: int) -> str | None:
    """The note for a training set ``DistributedSampler`` cannot split evenly across ``world_size`` processes (it
    repeats samples to even the shards), or ``None``.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> uneven_split(DataLoader(range(1499)), 2)[:80]
        'Note: the 1499 training samples do not split evenly across 2 processes: Distribu'
        >>> uneven_split(DataLoader(range(1500)), 2), uneven_split(DataLoader(range(1499)), 1)
        (None, None)
    """
    dataset = getattr(loader, "dataset", None)
    if world_size == 1 or not isinstance(dataset, Sized) or isinstance(dataset, IterableDataset):
        return None
    padding = -len(dataset) % world_size
    if not padding:
        return None
    return (
        f"Note: the {len(dataset)} training samples do not split evenly across {world_size} processes: "
        f"DistributedSampler repeats {padding} of them each epoch to even the shards (a number of samples divisible "
        f"by {world_size} makes the run equal to one process's)"
    )
