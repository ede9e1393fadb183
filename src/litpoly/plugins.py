"""The run layer's Trainer plugins: a checkpoint reader and writer that neither runs code nor leaves a broken file,
a profiler that costs nothing.

:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it into place, and refuses to
write non-finite weights, so a good checkpoint is never replaced by a broken one; it restores the checkpoint the
command line read and checked, not the file read a second time. :class:`NullProfiler` is
Lightning's "no profiler", made cheap, and with it no call to a callback's step hook that does nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import weakref
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler

from litpoly.checkpoint_file import read_checkpoint
from litpoly.console import one_line
from litpoly.errors import CheckpointWriteError


class NonFiniteCheckpointError(RuntimeError):
    """Raised instead of writing a checkpoint whose weights are NaN or infinite."""


def _all_finite(state_dict: dict[str, Any]) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if torch.is_tensor(v) and v.is_floating_point())


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made safe against kills: write a temporary file, then rename.

    ``os.replace`` is atomic on POSIX and Windows, so a checkpoint path holds either the previous
    complete file or the new complete file, whenever the process dies. (This protects against
    the process being killed; surviving a power cut would also need an fsync.) A local file is written by
    ``torch.save`` itself: Lightning's own path goes through fsspec and an in-memory copy of the file, half a
    millisecond more a save here (with ``best.ckpt`` saved at most validations, that adds up). Remote paths
    (``s3://`` …) are written as Lightning writes them.
    """

    def __init__(self, checked: tuple[Path, dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.checked = checked

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None) -> Any:
        """The checkpoint the command line has already read and checked, when ``path`` is its file: read once, so
        the file cannot change between the check and the restore. Any other file is read weights-only, whatever
        ``weights_only`` asks (see :func:`litpoly.checkpoint_file.read_checkpoint`)."""
        if self.checked is not None and Path(path) == self.checked[0]:
            checked, self.checked = self.checked[1], None  # handed over once: the Trainer owns it from here
            return checked
        return read_checkpoint(Path(path))

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if not _all_finite(checkpoint.get("state_dict", {})):
            raise NonFiniteCheckpointError(f"refusing to write {path}: the model's weights are not finite")
        if "://" in str(path) or storage_options is not None:  # (Lightning refuses storage_options)
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        try:
            torch.save(checkpoint, partial)
            os.replace(partial, path)
        except (OSError, RuntimeError) as error:  # torch reports a failed write as a RuntimeError from C++
            raise CheckpointWriteError(f"could not write {path}: {_why(error, path.parent, checkpoint)}") from None
        finally:
            partial.unlink(missing_ok=True)


def _why(error: BaseException, folder: Path, checkpoint: dict[str, Any]) -> str:
    """Why a checkpoint write failed, in words: torch's own message for a full disk is a C++ stream position."""
    size = sum(v.nbytes for v in checkpoint.get("state_dict", {}).values() if torch.is_tensor(v))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # the folder itself is gone (a lost mount)
        free = None
    if getattr(error, "errno", None) == errno.ENOSPC or (free is not None and free < size + 2**20):
        free = free or 0
        return (
            f"the disk is full ({free / 2**20:.0f} MiB free in {folder}); the checkpoints written before are intact: "
            "free space, then resume with --ckpt_path last"
        )
    return f"{one_line(error)}; the checkpoints written before are intact"


_NOTHING = contextlib.nullcontext()

#: The callback hooks of every training step. Lightning calls each of them on every callback, every step, whether
#: the callback's class overrides it or inherits ``Callback``'s empty one.
STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_zero_grad",
    "on_before_optimizer_step",
    "on_train_batch_end",
)


def skip_empty_step_hooks(callbacks: Iterable[L.Callback]) -> list[tuple[L.Callback, str]]:
    """Hide from Lightning each step hook a callback inherits empty from ``Callback``: ``(callback, hook)`` each.

    Lightning's dispatcher (``trainer.call._call_callback_hooks``) skips a hook attribute that is not callable;
    an instance attribute ``None`` shadows the inherited method. What it saves is the dispatch itself (the
    profiler's context, the callback's ``state_key``, a formatted name), per callback and hook, several times a
    step; what runs is unchanged, since the hidden hooks do nothing. Undone by :func:`restore_step_hooks`.
    ``tests/run/test_lean_defaults.py`` tells when a Lightning upgrade stops skipping such an attribute.
    """
    hidden = []
    for callback in callbacks:
        for hook in STEP_HOOKS:
            if getattr(type(callback), hook, None) is getattr(L.Callback, hook) and hook not in vars(callback):
                setattr(callback, hook, None)
                hidden.append((callback, hook))
    return hidden


def restore_step_hooks(hidden: Iterable[tuple[L.Callback, str]]) -> None:
    """Undo :func:`skip_empty_step_hooks`: the callbacks' inherited hooks are visible again."""
    for callback, hook in hidden:
        vars(callback).pop(hook, None)


class NullProfiler(PassThroughProfiler):
    """Lightning's "no profiler", made cheap.

    Lightning wraps every hook call in ``trainer.profiler.profile(name)``: dozens of calls per training step,
    plus several per callback. Its default ``PassThroughProfiler`` records nothing, but its ``profile`` is a
    generator-based context manager, built and entered anew for each call: for a small model's step that adds up
    to a share of the step itself (``scripts/benchmark.py`` measures what it costs). This one returns one shared,
    stateless ``nullcontext`` instead.

    Once attached to its Trainer (:meth:`attach`), it also hides each callback's empty step hooks for the length
    of each run (:func:`skip_empty_step_hooks`): calls that only a profiler could see, and this one records nothing.

    Used when ``--trainer.profiler`` is not given; ``--trainer.profiler simple`` (or ``advanced``,
    ``pytorch``) profiles as usual, every hook call included.
    """

    def __init__(self) -> None:
        super().__init__()
        self._trainer: weakref.ref[L.Trainer] | None = None
        self._hidden: list[tuple[L.Callback, str]] = []

    def attach(self, trainer: L.Trainer) -> None:
        """The Trainer whose callbacks to look at (weakly held: the Trainer holds its profiler)."""
        self._trainer = weakref.ref(trainer)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with its Trainer for `ddp_spawn`: a weak reference does not pickle, and each spawned process's
        # Trainer is a copy this one was never attached to (there, every hook is called, as Lightning does).
        return {**self.__dict__, "_trainer": None, "_hidden": []}

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        # Called by the Trainer once the model's own callbacks (configure_callbacks) have joined the list.
        super().setup(stage, local_rank, log_dir)
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is not None:
            restore_step_hooks(self._hidden)
            self._hidden = skip_empty_step_hooks(trainer.callbacks)  # type: ignore[attr-defined]

    def teardown(self, stage: str | None) -> None:
        restore_step_hooks(self._hidden)
        self._hidden = []
        super().teardown(stage)

    def profile(self, action_name: str) -> AbstractContextManager[None]:  # type: ignore[override]
        return _NOTHING
