"""A checkpoint file, read weights-only: tensors and plain data, never code, and no more memory than its size.

Every path that reads a checkpoint (``--ckpt_path``, the Trainer's restore through ``AtomicCheckpointIO``,
``scripts/export.py``, ``scripts/runs.py``, the checks) reads it with :func:`read_checkpoint`.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import jsonargparse.typing
import torch

from litpoly.errors import CheckpointError

#: jsonargparse's typed numbers (``lr: PositiveFloat`` in a model's ``__init__``, as the README recommends) are float
#: and int subclasses: passed on as they are, to an optimizer say, they are pickled into the checkpoint by class.
#: They hold a number and no code, so weights-only reads — ours and Lightning's — may load them.
SAFE_TYPES = (
    jsonargparse.typing.PositiveFloat,
    jsonargparse.typing.PositiveInt,
    jsonargparse.typing.NonNegativeFloat,
    jsonargparse.typing.NonNegativeInt,
    jsonargparse.typing.ClosedUnitInterval,
    jsonargparse.typing.OpenUnitInterval,
)
torch.serialization.add_safe_globals(list(SAFE_TYPES))


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint file that cannot be read: truncated, corrupt or not a checkpoint (``reason`` says which)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"`ckpt_path` {path} {reason}")
        self.reason = reason


def read_checkpoint(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Load a Lightning checkpoint from ``path``, weights only (tensors and plain data, never code).

    The file must be what ``torch.save`` writes: a zip archive whose records are stored, not compressed. So what
    it holds can claim no more memory than its size on disk, and a small file cannot make the read allocate
    gigabytes (a compressed record, or the old non-zip format, whose storages say their own sizes).

    ``mmap``: map the tensors' bytes rather than read them (to look at a checkpoint's records, not its weights).

    Raises:
        CheckpointError: One line, when the file holds objects that may not be loaded (code); an
            :class:`UnreadableCheckpoint` when it is truncated, corrupt or not a Lightning checkpoint.
    """
    _check_archive(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))  # torch names the first object it would not load
        if refused is not None:
            raise CheckpointError(
                f"`ckpt_path` {path} holds objects that are not allowed to load ({refused.group(1)}): checkpoints "
                "are read weights-only, so no code they carry ever runs"
            ) from None
        # A truncated zip, pickle garbage, another format: all mean "unreadable".
        raise UnreadableCheckpoint(
            path, f"is not a readable checkpoint (truncated or corrupt?): {type(error).__name__}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UnreadableCheckpoint(path, "is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint


def _check_archive(path: Path) -> None:
    """Refuse, before anything is allocated, a file that is not the stored zip archive ``torch.save`` writes."""
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise UnreadableCheckpoint(
            path, f"is not a readable checkpoint (truncated or corrupt?): {type(error).__name__}"
        ) from None
    compressed = next((r.filename for r in records if r.compress_type != zipfile.ZIP_STORED), None)
    if compressed is not None:
        raise UnreadableCheckpoint(path, f"has a compressed record ({compressed}), which torch.save never writes")
    if sum(r.file_size for r in records) > path.stat().st_size:
        raise UnreadableCheckpoint(path, "claims records larger than the file itself (corrupt?)")
