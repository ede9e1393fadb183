"""Checkpoints: found by ``--ckpt_path``, read safely, never half-written, saved on a schedule cheaply.

- :func:`resolve_checkpoint` turns ``--ckpt_path`` into a file (``last``: the newest run's ``last.ckpt``).
- :func:`read_checkpoint` loads a user-given file weights-only: a checkpoint can carry pickled code, and
  loading one must never run it.
- :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it into place, and
  refuses to write non-finite weights, so a good checkpoint is never replaced by a broken one.
- :class:`PeriodicCheckpoint` is Lightning's ``ModelCheckpoint`` with a default suited to runs that count
  steps, and its ``state_key`` computed once.
"""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint


def last_checkpoints(logs: Path) -> list[Path]:
    """Every run's ``checkpoints/last.ckpt`` under ``logs`` (``lightning_logs/``)."""
    return list(logs.glob("version_*/checkpoints/last.ckpt"))


def resolve_checkpoint(ckpt_path: str, logs: Path) -> Path:
    """The file ``--ckpt_path`` means: a path as given, or for ``last`` the newest ``last.ckpt`` under ``logs``.

    Lightning's own ``last`` looks only in the *new* run's folder, which is empty when a new command
    resumes an old run; here it means the newest run's ``checkpoints/last.ckpt``.

    Raises:
        ValueError: One line naming the setting, when there is no such file.
    """
    if ckpt_path == "last":
        candidates = last_checkpoints(logs)
        if not candidates:
            raise ValueError(f"`ckpt_path` last: no run under {logs} has a checkpoints/last.ckpt to resume from")
        return max(candidates, key=lambda p: p.stat().st_mtime)
    if ckpt_path in ("best", "hpc", "registry"):
        raise ValueError(f"`ckpt_path` {ckpt_path!r} is not supported here: give a checkpoint file or 'last'")
    path = Path(ckpt_path)
    if not path.is_file():
        raise ValueError(f"`ckpt_path`: no such checkpoint file: {ckpt_path}")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a Lightning checkpoint from ``path``, weights only (tensors and plain data, never code).

    Raises:
        ValueError: One line, when the file holds objects that may not be loaded (code), is truncated, corrupt
            or not a Lightning checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))  # torch names the first object it would not load
        if refused is not None:
            raise ValueError(
                f"`ckpt_path` {path} holds objects that are not allowed to load ({refused.group(1)}): checkpoints "
                "are read weights-only, so no code they carry ever runs"
            ) from None
        # A truncated zip, pickle garbage, another format: all mean "unreadable".
        raise ValueError(
            f"`ckpt_path` {path} is not a readable checkpoint (truncated or corrupt?): {type(error).__name__}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"`ckpt_path` {path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


class NonFiniteCheckpointError(RuntimeError):
    """Raised instead of writing a checkpoint whose weights are NaN or infinite."""


def _all_finite(state_dict: dict[str, Any]) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if torch.is_tensor(v) and v.is_floating_point())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe against kills: write a temporary file, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so a checkpoint path holds either the previous
    complete file or the new complete file, whenever the process dies. (This protects against
    the process being killed; surviving a power cut would also need an fsync.) Remote paths
    (``s3://`` …) are written as Lightning writes them.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if not _all_finite(checkpoint.get("state_dict", {})):
            raise NonFiniteCheckpointError(f"refusing to write {path}: the model's weights are not finite")
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            super().save_checkpoint(checkpoint, partial, storage_options)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)


class PeriodicCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint``, with a default made for runs that count steps, and a cached ``state_key``.

    A drop-in: every setting is ``ModelCheckpoint``'s, and so is the key its state is saved under, so
    checkpoints written with either class restore the other's state. Three differences:

    - Saving by steps or time (``every_n_train_steps``, ``train_time_interval``) with no ``monitor``,
      ``save_on_train_epoch_end`` defaults to true: no save is tied to validation then, but when validation
      is counted in steps Lightning would look for one after every validation, copying all logged metrics
      each time. Otherwise Lightning's default stands (with a ``monitor``, or saving every epoch, the save
      belongs after validation).
    - Lightning names each callback by its ``state_key`` whenever it calls one of its hooks, several times a
      step; ``ModelCheckpoint`` builds that string anew from its settings each time. The settings do not
      change after ``__init__``, so neither does the key: it is built once.
    - ``fast_dev_run`` writes no ``last.ckpt`` (Lightning 2.6 writes one at the end of training, although it
      says checkpointing is off for ``fast_dev_run``).

    Args:
        monitor: Logged metric that ranks checkpoints (e.g. ``val/mse``); ``None`` keeps the latest.
        save_on_train_epoch_end: Look for a save at the end of the training epoch rather than after each
            validation. Default: true when saving by steps or time without a ``monitor``, else Lightning's choice.
    """

    def __init__(
        self, *, monitor: str | None = None, save_on_train_epoch_end: bool | None = None, **kwargs: Any
    ) -> None:
        by_steps_or_time = kwargs.get("every_n_train_steps") or kwargs.get("train_time_interval")
        by_epochs = kwargs.get("every_n_epochs")
        if save_on_train_epoch_end is None and monitor is None and by_steps_or_time and not by_epochs:
            save_on_train_epoch_end = True
        super().__init__(monitor=monitor, save_on_train_epoch_end=save_on_train_epoch_end, **kwargs)

    @cached_property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning 2.6 says fast_dev_run disables checkpointing, then writes last.ckpt here anyway (into the
        # working folder, as a fast_dev_run has no logger).
        if not getattr(trainer, "fast_dev_run", False):
            super().on_train_end(trainer, pl_module)
