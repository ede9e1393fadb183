"""Printing from the run layer: one line from rank 0, above any progress bar; URLs without their passwords; a
process's whole output sent to a file."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from tqdm import tqdm


@rank_zero_only
def say(message: object, stderr: bool = False) -> None:
    """Print one line from rank 0 (to stdout, or stderr for warnings), above any live tqdm progress bar.

    Not ``LightningModule.print``: Lightning drops that line when no bar is active (e.g. at fit start).
    """
    tqdm.write(str(message), file=sys.stderr if stderr else sys.stdout)


#: A URL's query parameters that carry a secret (``?password=…``, ``&token=…``, ``X-Amz-Signature=…``): their values
#: are masked like a password before the ``@``.
_SECRET_PARAMETER = re.compile(
    r"([?&;][^=&;#]*(?:pass|pwd|token|secret|key|credential|signature|auth)[^=&;#]*=)[^&;#]*", re.IGNORECASE
)


_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")


def without_password(url: str) -> str:
    """``url`` without the user and password before its ``@``, nor the values of query parameters that carry a
    secret (a storage or tracking URL, to print or to save).

    Example:
        >>> without_password("postgresql://sweeper:secret@127.0.0.1/db"), without_password("sqlite:///study.db")
        ('postgresql://…@127.0.0.1/db', 'sqlite:///study.db')
        >>> without_password("postgresql://127.0.0.1/db?user=sweeper&password=secret&sslmode=require")
        'postgresql://127.0.0.1/db?user=sweeper&password=…&sslmode=require'
    """
    head, sep, tail = url.rpartition("@")
    masked = url if not sep else head.split("://")[0] + "://…@" + tail
    return _SECRET_PARAMETER.sub(r"\1…", masked)


def without_passwords(value: Any) -> Any:
    """``value`` (a parsed config: namespaces, lists, mappings; or a line of text) with :func:`without_password`
    applied to every URL in it; the rest unchanged, and ``value`` itself left as it was.

    Example:
        >>> without_passwords({"logger": [{"tracking_uri": "http://alice:s3cret@host:5000"}], "lr": 0.1})
        {'logger': [{'tracking_uri': 'http://…@host:5000'}], 'lr': 0.1}
    """
    if isinstance(value, Namespace):
        masked = value.clone()
        for key, item in value.items():
            masked[key] = without_passwords(item)
        return masked
    if isinstance(value, list | tuple):
        return type(value)(without_passwords(item) for item in value)
    if isinstance(value, Mapping):
        return {key: without_passwords(item) for key, item in value.items()}
    return _URL.sub(lambda url: without_password(url.group()), value) if isinstance(value, str) else value


def one_line(message: object, limit: int = 300) -> str:
    """``message`` (an exception's, or any text) on one line, cut at a sentence's end within ``limit`` characters:
    what a library's error contributes to a one-line error of ours. An exception without a message gives its type.

    Example:
        >>> one_line(ValueError("first sentence.   second, much longer sentence"), limit=20)
        'first sentence.'
        >>> one_line(OSError())
        'OSError'
    """
    text = " ".join(str(message).split())
    if not text and isinstance(message, BaseException):
        return type(message).__name__
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[: cut + 1] if cut > 0 else text[:limit] + "…"


def step_loss(outputs: Any) -> Tensor | None:
    """The loss of a training step, read as Lightning reads ``training_step``'s return value.

    Example:
        >>> import torch
        >>> step_loss({"loss": torch.tensor(2.0), "other": 1}), step_loss(torch.tensor(3.0)), step_loss(None)
        (tensor(2.), tensor(3.), None)
    """
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, Tensor) else None


@contextlib.contextmanager
def output_to(log: Path) -> Iterator[None]:
    """Send everything this process writes to stdout and stderr to ``log`` (appended), then back: a sweep's trial,
    a check's run, run in this process with its output in a file.

    Both ``sys.stdout``/``sys.stderr`` (which need not be file descriptors 1 and 2: pytest's capture replaces them)
    and the file descriptors themselves (for logging handlers that kept the original streams, C code and child
    processes such as DataLoader workers) are redirected.
    """
    streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    for stream in streams:
        if stream is not None:
            stream.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with log.open("a", buffering=1) as file, contextlib.redirect_stdout(file), contextlib.redirect_stderr(file):
            os.dup2(file.fileno(), 1)
            os.dup2(file.fileno(), 2)
            try:
                yield
            finally:
                for stream in (*streams, file):
                    if stream is not None:
                        stream.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])
