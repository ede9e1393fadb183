"""The two ways a run ends early on purpose, each reported by the command line in one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class SettingError(ValueError):
    """A combination of settings that cannot work, found once the run is being set up.

    Raise it from a data module's or a model's hooks (``setup``, ``train_dataloader``, …) when a check needs
    more than one class's settings or the Trainer's (a ``ValueError`` in ``__init__`` is reported the same
    way). The command line prints ``error: <message>``, exits with status 2 and removes the run folder, which
    holds nothing yet. Name the settings involved and what is allowed, as in
    ``Expected `data.num_samples` >= `model.degree` + 1 = 4, got 3``.

    Attributes:
        run_folder: The run folder to remove once Lightning has closed its files (set by ``ConsoleReport`` when the
            run wrote no checkpoint), or ``None``.
    """

    run_folder: Path | None = None


class TrainingStopped(Exception):
    """A run that stopped early for a reason the user must see: a one-line message and the process's exit status.

    Attributes:
        exit_code: 1 when training diverged; ``128 + signal number`` when SIGINT or SIGTERM stopped it.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
