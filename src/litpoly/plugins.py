"""The run layer's Trainer plugins: a checkpoint reader and writer that neither runs code nor leaves a broken file,
a profiler that costs nothing.

:class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it into place, and refuses to
write non-finite weights, so a good checkpoint is never replaced by a broken one; it restores the checkpoint the
command line read and checked, not the file read a second time. :class:`NullProfiler` is
Lightning's "no profiler", made cheap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.profilers import PassThroughProfiler

from litpoly.console import one_line
from litpoly.errors import CheckpointWriteError
from litpoly.runs import read_checkpoint


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
        ``weights_only`` asks (see :func:`litpoly.runs.read_checkpoint`)."""
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


class NullProfiler(PassThroughProfiler):
    """Lightning's "no profiler", made cheap.

    Lightning wraps every hook call in ``trainer.profiler.profile(name)``: dozens of calls per training step,
    plus several per callback. Its default ``PassThroughProfiler`` records nothing, but its ``profile`` is a
    generator-based context manager, built and entered anew for each call: for a small model's step that adds up
    to a share of the step itself (``scripts/benchmark.py`` measures what it costs). This one returns one shared,
    stateless ``nullcontext`` instead.

    Used when ``--trainer.profiler`` is not given; ``--trainer.profiler simple`` (or ``advanced``,
    ``pytorch``) profiles as usual.
    """

    def profile(self, action_name: str) -> AbstractContextManager[None]:  # type: ignore[override]
        return _NOTHING
