"""The signals that stop a command: SIGINT (Ctrl-C), SIGTERM (a scheduler's stop, ``kill``) and SIGHUP (the terminal
closed, an ssh connection dropped). Python stops at once on SIGINT alone, with a traceback wherever it lands; on
the other two the process dies without a word or a checkpoint.

The command line (:func:`litpoly.cli.run`) handles them for the whole command (:func:`handled`, :func:`deferred`):
while the settings are read, a signal stops the command at once; from the moment the run begins it is recorded,
and the run stops at its next safe point: ``RunGuard`` at the end of a training step (its state saved), and
``SignalStop`` at the end of a setup stage or an evaluation batch. A second signal stops the command at once.
Each way, the command ends with one line (:class:`~litpoly.errors.Interrupted`) and exit status 128 + the signal's
number.

``DataLoader`` workers. Ctrl-C and a closed terminal reach every process of the terminal's group, workers
included, and SIGTERM sent to a whole group does too (``kill -- -PGID``; SLURM signals every process of a job
step), which PyTorch's own handler answers by ending the worker at once: the run's next batch would fail before
the run could stop cleanly. So a process forked from the one that handles the signals ignores them, and the
training and validation loaders of a ``fit`` start their workers shielded (:class:`ShieldedWorkerInit`): the run's
own process stops its workers when it stops. Where a worker ends anyway (an unshielded loader's, under SIGTERM),
its end no longer fails the step under way once a stop signal has come (PyTorch would raise it into whatever code
runs); should the run still ask it for a batch, the command says in one line that the signal stopped it, and
``--ckpt_path last`` resumes from the newest checkpoint saved.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

#: The signals that stop a command.
STOPS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received: list[int] = []  # the stop signals this process got during the current command (see `forget`)


class Stop(BaseException):
    """A signal that stopped the command at once (outside of training). A ``BaseException``, as
    ``KeyboardInterrupt`` is: raised from a signal handler it lands in any code, and no ``except Exception`` there
    may swallow it.

    Attributes:
        signum: The signal's number.
        run_folder: The run folder to remove (set by ``ConsoleReport`` when the run had saved nothing yet).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.run_folder: Path | None = None


def forget() -> None:
    """Forget the signals received so far: a new command begins (a sweep runs many in one process)."""
    _received.clear()


def received() -> int | None:
    """The first stop signal this process got since :func:`forget`, if any."""
    return _received[0] if _received else None


@contextlib.contextmanager
def handled(handler: Callable[[int], None], also: tuple[int, ...] = ()) -> Iterator[None]:
    """Within the block, ``handler(signum)`` runs on each of :data:`STOPS` and ``also`` (SLURM's requeue signal,
    see :mod:`litpoly.slurm`) in this process; processes forked in it ignore them. Only the main thread may install
    handlers: a command run from another thread keeps the ones it had. The previous handlers are put back after the
    block."""
    owner = os.getpid()
    watcher: list[object] = []  # PyTorch's SIGCHLD handler, while it is set aside

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != owner:  # a forked copy of this process (a DataLoader worker): its parent stops it
            return
        _received.append(signum)
        if not watcher:  # a worker that the same signal ended must not fail the step in progress
            watcher.append(signal.signal(signal.SIGCHLD, _worker_ended))
        handler(signum)

    previous: dict[int, object] = {}
    with contextlib.suppress(ValueError):  # not the main thread
        for signum in (*STOPS, *also):
            previous[signum] = signal.signal(signum, on_signal)
    try:
        yield
    finally:
        for number, old in [*previous.items(), *((signal.SIGCHLD, w) for w in watcher)]:
            # None: a handler set outside Python, which cannot be put back; the default is the closest.
            signal.signal(number, old if old is not None else signal.SIG_DFL)  # type: ignore[arg-type]


def _worker_ended(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD once a stop signal has come: PyTorch's handler would raise a worker's end into whatever code runs (the
    middle of a step); without it, a batch the run still asks a dead worker for fails where it is asked for."""


def deferred(at_once: Callable[[], bool] = lambda: False) -> Callable[[int], None]:
    """A handler for :func:`handled` that leaves the signal recorded (:func:`received`) for the run to stop at its
    next safe point, and raises :class:`Stop` where waiting makes no sense: when ``at_once()`` says so, and on a
    second signal (a second Ctrl-C: stop now)."""

    def handler(signum: int) -> None:
        if at_once() or len(_received) > 1:
            raise Stop(signum)

    return handler


class ShieldedWorkerInit:
    """A ``DataLoader``'s ``worker_init_fn`` that leaves the stop signals to the run's process, which stops its
    workers when it stops, then runs the loader's own (``init``). SIGINT and SIGHUP are ignored (a forked worker
    ignores them anyway, see :func:`handled`: this covers workers started with ``spawn``); SIGTERM ends the worker
    only when its parent sends it (as PyTorch's own handler does, which ends it on any): a SIGTERM to the whole
    process group leaves it serving the step under way."""

    def __init__(self, init: Callable[[int], None] | None) -> None:
        self.init = init

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        if hasattr(signal, "sigwaitinfo"):  # not on macOS: there SIGTERM stays PyTorch's, which ends the worker
            # Python's handlers are not told who sent a signal: SIGTERM is blocked in every thread and taken by one
            # that asks (sigwaitinfo), before the loader's own code can start other threads.
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
            threading.Thread(target=_end_when_parent_asks, args=(os.getppid(),), daemon=True).start()
        if self.init is not None:
            self.init(worker_id)


def _end_when_parent_asks(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)  # as PyTorch's worker does on its parent's SIGTERM


def shield_workers(loader: object) -> None:
    """Start ``loader``'s workers (if it is a ``DataLoader`` with any) shielded: see :class:`ShieldedWorkerInit`."""
    init = getattr(loader, "worker_init_fn", None)
    if getattr(loader, "num_workers", 0) > 0 and not isinstance(init, ShieldedWorkerInit):
        loader.worker_init_fn = ShieldedWorkerInit(init)  # type: ignore[attr-defined]


@contextlib.contextmanager
def starting(what: str = "the run") -> Iterator[None]:
    """Around a script's heavy imports (torch, Lightning: seconds): a signal then ends the process with one line and
    exit status 128 + its number, rather than a ``KeyboardInterrupt`` traceback (SIGINT) or a death without a word
    (SIGTERM, SIGHUP). The previous handlers are put back after the block."""

    def stop(signum: int) -> None:
        with contextlib.suppress(OSError):  # a terminal that hung up
            print(f"{signal.Signals(signum).name}: {not_begun(what)}", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    with handled(stop):
        yield


def not_begun(what: str = "the run") -> str:
    """What a signal before ``what`` began stopped, in words."""
    return f"stopped before {what} began; nothing was written."
