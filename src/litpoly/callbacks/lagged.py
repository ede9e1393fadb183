"""Reading a step's values on an accelerator one step late, so that the host never waits for the step it queued.

A read of a device value (``.item()``, ``.tolist()``, ``float(t)``, ``if t:``) waits until the device has run every
kernel queued before it. Read after every step, that wait stops the host from queueing the next step while the
device runs this one: Lightning's Python work and the device's no longer overlap, and a small model's step costs
their sum. :class:`LaggedReads` copies the values into pinned host memory without waiting (the copy is queued
behind the step), marks its arrival with an event, and hands them out one step later, when the copy has normally
long arrived: the only wait left is for a step the device has already been given a whole step's time to finish.

On the CPU there is nothing to overlap: the values are read at once (see ``RunGuard``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class Reading(NamedTuple):
    """Values read off the device, with the ``tag`` they were submitted with (the step they belong to)."""

    tag: Any
    values: list[float]


class LaggedReads:
    """One reading in flight: :meth:`submit` starts this step's copy and returns the previous step's values.

    Example (on the CPU the copy is done at once; on an accelerator it is queued)::

        >>> reads = LaggedReads()
        >>> reads.submit(1, torch.tensor([1.0, 2.0])) is None
        True
        >>> reads.submit(2, torch.tensor([3.0])), reads.drain(), reads.drain()
        (Reading(tag=1, values=[1.0, 2.0]), Reading(tag=2, values=[3.0]), None)
    """

    def __init__(self) -> None:
        self._in_flight: tuple[Any, torch.Tensor, Any] | None = None

    def submit(self, tag: Any, values: torch.Tensor) -> Reading | None:
        """Start copying ``values`` (a 1-D tensor, on any device) to the host, and return the reading submitted
        before it, if any: waiting, if it must, for that reading's copy only, never for this step's work."""
        device = values.device
        host = torch.empty(values.shape, dtype=values.dtype, pin_memory=device.type == "cuda")
        host.copy_(values, non_blocking=device.type != "cpu")
        arrived = None
        if device.type != "cpu":
            arrived = torch.Event(device=device)
            arrived.record()
        previous, self._in_flight = self._in_flight, (tag, host, arrived)
        return self._read(previous)

    def drain(self) -> Reading | None:
        """The reading in flight, waiting for its copy: before a checkpoint is written, or when training ends."""
        previous, self._in_flight = self._in_flight, None
        return self._read(previous)

    def discard(self) -> None:
        self._in_flight = None

    @staticmethod
    def _read(in_flight: tuple[Any, torch.Tensor, Any] | None) -> Reading | None:
        if in_flight is None:
            return None
        tag, host, arrived = in_flight
        if arrived is not None:
            arrived.synchronize()  # the copy of a step queued a whole step ago: normally long done
        return Reading(tag, host.tolist())
