"""Exact resume for an ordinary ``DataLoader``: the run layer makes the user's training loader resumable.

An interrupted run resumed from its checkpoint must end exactly where the uninterrupted run ends. With a plain
``DataLoader(dataset, shuffle=True, num_workers=N)`` Lightning 2.6 does not get there, for three reasons:

- ``shuffle=True`` draws each epoch's order from the global torch RNG when the epoch's iterator is made, and a
  checkpoint holds no RNG state: the resumed run shuffles differently.
- A plain ``DataLoader`` has no position to save: a run resumed mid-epoch starts that epoch's data over.
- Worker processes fetch indices as soon as an iterator exists, and Lightning makes the resumed epoch's iterator
  before it tells the sampler the epoch (``set_epoch``); with ``estimated_stepping_batches`` in
  ``configure_optimizers`` even before it restores the checkpoint's loop state.

:class:`ExactResume` (on every ``fit`` the command line runs) closes them without a line of the user's code:

- Their training ``DataLoader`` is rebuilt as a :class:`ResumableLoader` over the same dataset and settings
  (workers, collate function, pinning, ...), whose order is ``DistributedSampler``'s: a permutation seeded by the
  run's seed and the epoch alone (on one process, and split across processes under DDP exactly as Lightning's own
  ``DistributedSampler`` would); a dataset with a ``set_epoch`` method is told the epoch before each epoch's
  workers copy it. It follows Lightning's stateful-loader protocol: a checkpoint records the epoch
  and how many batches of it were served, and the resumed run gets the very next batch. Its workers are seeded
  from the run's seed and the epoch, so per-epoch random draws in workers repeat too.
- The checkpoint records the global RNG states (torch, CUDA, numpy, ``random``), restored when training resumes,
  so dropout and other random draws in the training step go on as they would have.

:class:`WeightsAsSaved` (on every subcommand) gives a model restored from a checkpoint the weights the checkpoint
holds, where Lightning would round them through float32 first (a ``64-true`` run).

What it cannot rebuild it leaves alone and says so, in one line at the start of a resumed run: an
``IterableDataset``, a sampler or batch sampler of the user's own, a ``DataLoader`` subclass. (A loader that
already has ``state_dict``/``load_state_dict``, like :class:`~litpoly.data.StepLoader` or torchdata's
``StatefulDataLoader``, is resumable by its own protocol and is kept as it is.)
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch.utils.data import (
    DataLoader,
)

from litpoly import compat, signals
from litpoly.console import say
from litpoly.data.resumable import dataset_set_epoch, resumable, run_seed, uneven_split, why_not_resumable


def rng_states() -> dict[str, Any]:
    """The global RNG states, as plain tensors and numbers (a checkpoint is read weights-only)."""
    # numpy's legacy global generator is the one `np.random.rand` and friends in the user's code draw from.
    kind, keys, position, has_gauss, gauss = np.random.get_state(legacy=True)  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` recorded."""
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))  # noqa: NPY002
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(L.Callback):
    """Makes a resumed ``fit`` go on exactly as the uninterrupted run would have (see the module's docstring).

    Any LightningModule and LightningDataModule: it rebuilds the training ``DataLoader`` their
    ``train_dataloader`` returns, saves the RNG states in every checkpoint and restores them on resume. A resumed
    run whose training loader it could not make resumable says so in one line.
    """

    def __init__(self) -> None:
        self._rng: dict[str, Any] | None = None  # from the checkpoint, until training resumes
        self._resuming = False
        self._not_exact: str | None = None  # why this run's loader is not resumable, if it is not
        self._wrapped: list[tuple[Any, str]] = []  # (object, method name) of each loader method wrapped
        self._said: set[str] = set()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return

        def training(loader: Any) -> Any:
            self._not_exact = why_not_resumable(loader)
            if self._not_exact is None and not isinstance(loader, compat.Stateful):
                loader = resumable(loader, trainer)
            if getattr(loader, "persistent_workers", False) and dataset_set_epoch(loader.dataset) is not None:
                self._not_exact = "its dataset has set_epoch, which persistent workers never see after the first epoch"
                self._say_once(
                    "Warning: the training dataset has set_epoch, but its persistent workers keep the copy they made "
                    "in the run's first epoch and never see another epoch: set persistent_workers=False"
                )
            if (note := uneven_split(loader, trainer.world_size)) is not None:
                self._say_once(note)
            signals.shield_workers(loader)  # a signal to the process group must not end them mid-step
            return loader

        def validation(loaders: Any) -> Any:
            # A DataLoader draws its workers' base seed from the global torch RNG whenever it makes an iterator:
            # the first validation of a resumed run would draw where the uninterrupted run did not (its iterator
            # was made during the sanity check), and every random draw of training after it would differ.
            for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
                if isinstance(loader, DataLoader) and loader.generator is None:
                    loader.generator = torch.Generator().manual_seed(run_seed())
                signals.shield_workers(loader)
            return loaders

        for name, convert in (("train_dataloader", training), ("val_dataloader", validation)):
            self._wrap(trainer, pl_module, name, convert)

    def _say_once(self, message: str) -> None:
        """Say ``message`` on stderr once a run (a resumed run asks for its training loader twice: on_fit_start)."""
        if message not in self._said:
            self._said.add(message)
            say(message, stderr=True)

    def _wrap(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str, convert: Callable[[Any], Any]) -> None:
        """Make ``name`` (``train_dataloader``, ...) of the data module, or else the model, return its loaders through
        ``convert``, as an instance attribute (the class's own method is untouched). Nothing when neither defines
        it: Lightning tells a defined loader by its being overridden, and a wrapper would look like one."""
        datamodule = getattr(trainer, "datamodule", None)
        source = datamodule if datamodule is not None and is_overridden(name, datamodule) else pl_module
        if not is_overridden(name, source):
            return
        original = getattr(source, name)
        setattr(source, name, lambda: convert(original()))
        self._wrapped.append((source, name))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for source, name in self._wrapped:
            delattr(source, name)  # the class's own method again
        self._wrapped = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            compat.forget_train_loader(trainer)  # set up again once the checkpoint's loop state is restored

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # A run that fails in its sanity check (a metric it does not log, a file a worker cannot read) may have a
        # training loader already, set up by `estimated_stepping_batches`, but Lightning then tears down only the
        # validation loop: the training loader's persistent workers would live on until the garbage collector finds
        # them, whose order of finalizing loses torch's message to stop, so each worker is waited for and then
        # killed (seconds each, in a sweep's next trial or a notebook's next cell). In any other phase Lightning
        # tears the training loader down itself, after the callbacks that may save its position (a checkpoint on
        # exception) have run.
        if trainer.sanity_checking:
            compat.forget_train_loader(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rng = state_dict.get("rng")
        self._resuming = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._resuming and trainer.ckpt_path is None:
            return
        if self._rng is not None:
            set_rng_states(self._rng)
        why = self._not_exact or (None if self._rng is not None else "its checkpoint holds no RNG states")
        if why is not None:
            say(
                f"Warning: this resumed run may not go on exactly as the uninterrupted run would: {why} "
                "(README: Exact resume)",
                stderr=True,
            )
        self._rng, self._resuming = None, False


class WeightsAsSaved(L.Callback):
    """Gives a model restored from a checkpoint the very weights the checkpoint holds, in any precision.

    Lightning 2.6 loads a checkpoint's weights into the model as it was made (float32) and converts the model to the
    run's precision afterwards: a ``64-true`` run resumed, validated or tested from its own float64 checkpoint goes
    on from weights rounded to float32 and back. Once the model has its precision, the saved weights are loaded
    again wherever they differ from what the model holds in the same dtype. (A narrower run, ``bf16-true`` from a
    float32 checkpoint, rounds them on purpose; its dtypes differ and nothing is reloaded.)

    The model's ``example_input_array`` gets the run's precision too: Lightning's model summary runs the model on it
    as it is, but a true-precision run (``64-true``, ``bf16-true``) converts the weights, not that input.
    """

    def __init__(self) -> None:
        self._saved: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if pl_module.example_input_array is not None:
            pl_module.example_input_array = trainer.precision_plugin.convert_input(pl_module.example_input_array)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._saved = checkpoint.get("state_dict")

    def _load_as_saved(self, pl_module: L.LightningModule) -> None:
        saved, self._saved = self._saved, None
        if not saved:
            return
        current = pl_module.state_dict()
        if any(
            key in current and torch.is_tensor(value) and value.dtype == current[key].dtype
            and not torch.equal(value.to(current[key].device), current[key])
            for key, value in saved.items()
        ):  # fmt: skip
            pl_module.load_state_dict(saved)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._load_as_saved(pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._load_as_saved(pl_module)  # `validate` (in `fit`, on_fit_start has taken them)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._load_as_saved(pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._load_as_saved(pl_module)
