"""How a run ends early on purpose: one exception type per reason, each with its one line and exit status.

Library code raises these and never exits; :func:`litpoly.cli.main` turns one into ``error: <message>`` on stderr
and its ``exit_code``, without a traceback. Code that runs commands itself (a sweep, ``scripts/check.py``, a test)
calls :func:`litpoly.cli.run` and catches the types it cares about::

    try:
        run(["fit", "--model.lr", "0.1"])
    except Diverged as stop:      # the sampler learns this region is bad
        ...
    except SettingError as error: # a bad flag or config: the same line the command line prints
        ...
"""

from __future__ import annotations

import signal
from pathlib import Path


class RunError(Exception):
    """A run that could not start or could not finish, for a reason the user must see in one line.

    Attributes:
        exit_code: The process's exit status when the command line reports it.
        run_folder: The run folder to remove once Lightning has closed its files (set by ``ConsoleReport`` when the
            run stopped before it saved anything: a setting found wrong during setup, a signal before training),
            or ``None``.
    """

    exit_code = 1
    run_folder: Path | None = None

    @property
    def line(self) -> str:
        """What the command line prints: ``error: <message>`` on one line."""
        return f"error: {' '.join(str(self).split())}"


class SettingError(RunError, ValueError):
    """A setting, or a combination of settings, that cannot work (exit status 2, as argparse's errors).

    Raise it from a data module's or a model's hooks (``setup``, ``train_dataloader``, …) when a check needs
    more than one class's settings or the Trainer's (a ``ValueError`` in ``__init__`` is reported the same
    way). The command line prints ``error: <message>``, exits with status 2 and removes the run folder, which
    holds nothing yet. Name the settings involved and what is allowed, as in
    ``Expected `data.num_samples` >= `model.degree` + 1 = 4, got 3``.
    """

    exit_code = 2


class CheckpointError(SettingError):
    """``--ckpt_path`` names no checkpoint, an unreadable one, one holding code, or one that does not fit the model
    the settings make (exit status 2)."""


class CheckpointWriteError(RunError):
    """A checkpoint could not be written (a full disk, a lost mount); the one already at its path is intact
    (exit status 1)."""


class AlreadyDone(RunError):
    """``fit`` resuming a run that already finished its schedule: nothing to train, nothing written (exit status 0,
    so that relaunching a finished preemptible job is no failure)."""

    exit_code = 0

    @property
    def line(self) -> str:
        """The message alone: no error."""
        return str(self)


class Diverged(RunError):
    """Training stopped because a step's loss or weights are no longer finite (or pass a set threshold); no
    checkpoint of the diverged model was written (exit status 1).

    Attributes:
        step: The index of the step that diverged.
    """

    exit_code = 1

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


class Interrupted(RunError):
    """A signal (SIGINT, SIGTERM, SIGHUP) stopped the command: a training run at a step boundary, its state saved
    where checkpointing is on; anything else at once (exit status 128 + the signal's number, as a shell reports it).

    Attributes:
        signum: The signal's number.
        finished: The run had already trained its last step and saved it when the signal came: its results stand.
    """

    def __init__(self, message: str, signum: int, finished: bool = False) -> None:
        super().__init__(message)
        self.signum = signum
        self.finished = finished
        self.exit_code = 128 + signum

    @property
    def line(self) -> str:
        """The message alone: being interrupted is no error of the user's."""
        return str(self)

    @property
    def name(self) -> str:
        """The signal's name, e.g. ``SIGTERM``."""
        return signal.Signals(self.signum).name
