"""A no-op profiler that costs nothing: litpoly's default in place of Lightning's ``PassThroughProfiler``."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

from lightning.pytorch.profilers import PassThroughProfiler

_NOTHING = contextlib.nullcontext()


class NullProfiler(PassThroughProfiler):
    """Lightning's "no profiler", made cheap.

    Lightning wraps every hook call in ``trainer.profiler.profile(name)``: about 40 calls per training
    step, plus six per callback — ~80 for a litpoly ``fit``. Its default ``PassThroughProfiler`` records
    nothing, but its ``profile`` is a generator-based context manager that still costs about half a
    microsecond a call: tens of µs a step, on the order of a whole raw 2000-point step (65 µs here;
    ``scripts/benchmark.py`` measures it). This one returns one shared, stateless ``nullcontext`` instead.

    Used when ``--trainer.profiler`` is not given; ``--trainer.profiler simple`` (or ``advanced``,
    ``pytorch``) profiles as usual.
    """

    def profile(self, action_name: str) -> AbstractContextManager[None]:  # type: ignore[override]
        return _NOTHING
