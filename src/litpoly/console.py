"""Printing from the run layer: one line from rank 0, above any progress bar; URLs without their passwords."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from tqdm import tqdm


@rank_zero_only
def say(message: object, stderr: bool = False) -> None:
    """Print one line from rank 0 (to stdout, or stderr for warnings), above any live tqdm progress bar.

    Not ``LightningModule.print``: Lightning drops that line when no bar is active (e.g. at fit start).
    """
    tqdm.write(str(message), file=sys.stderr if stderr else sys.stdout)


def without_password(url: str) -> str:
    """``url`` without the user and password before its ``@`` (a storage or tracking URL, to print or to save).

    Example:
        >>> without_password("postgresql://sweeper:secret@127.0.0.1/db"), without_password("sqlite:///study.db")
        ('postgresql://…@127.0.0.1/db', 'sqlite:///study.db')
    """
    head, sep, tail = url.rpartition("@")
    return url if not sep else head.split("://")[0] + "://…@" + tail


def step_loss(outputs: Any) -> Tensor | None:
    """The loss of a training step, read as Lightning reads ``training_step``'s return value.

    Example:
        >>> step_loss({"loss": torch.tensor(2.0), "other": 1}), step_loss(torch.tensor(3.0)), step_loss(None)
        (tensor(2.), tensor(3.), None)
    """
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, Tensor) else None
