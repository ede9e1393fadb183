"""Sweep hyperparameters with Optuna: each trial an ordinary ``train.py fit`` run, the study in a database.

    python scripts/sweep.py configs/sweeps/lr.yaml                      # SGD's lr on the example, 16 trials
    python scripts/sweep.py configs/sweeps/lr.yaml --workers 2          # two worker processes, one study
    python scripts/sweep.py configs/sweeps/lr.yaml --storage postgresql://user:pw@host/db   # workers anywhere

The same command after Ctrl-C, SIGTERM, SIGKILL or a crash goes on with the same study: finished trials are kept;
a trial stopped by a signal is marked failed, and one whose process was killed outright is marked failed when its
heartbeat is missing (``--grace_period``) and its settings run again. Trials print as they finish; at the end, the
best trial's settings and the ``train.py`` command that reproduces it. See ``litpoly.sweep`` for the space file.
"""

from __future__ import annotations

from pathlib import Path

from litpoly import signals

with signals.starting("the sweep"):  # Ctrl-C while torch and Lightning load: one line, not a traceback
    from jsonargparse import ArgumentError, auto_cli

    from litpoly.cli import DEFAULT_CONFIG, exit_status
    from litpoly.errors import RunError
    from litpoly.sweep import sweep


def main(
    space: Path, storage: str | None = None, workers: int = 1, trials: int | None = None,
    logs: Path = Path("lightning_logs"), grace_period: float = 60.0, name: str | None = None,
) -> None:  # fmt: skip
    """Run or resume the sweep a search-space file describes.

    Args:
        space: The search-space YAML file (e.g. configs/sweeps/lr.yaml).
        storage: The study's database URL (sqlite:///…, postgresql://…). Default: study.db in the sweep's folder.
        workers: Worker processes on this machine, each running trials in turn.
        trials: Finished trials the study is to have (default: the space file's `trials`).
        logs: The folder the sweep's folder goes in (lightning_logs/sweeps/<name>/).
        grace_period: Seconds without a heartbeat (one every 2 s) after which a running trial counts as dead.
        name: The study's name (default: the space file's `name`), e.g. to run the same space as a new study.
    """
    sweep(space, DEFAULT_CONFIG, storage, workers, trials, logs, grace_period, name)


if __name__ == "__main__":
    try:
        auto_cli(main, as_positional=True, exit_on_error=False, allow_abbrev=False)
    except (ArgumentError, RunError) as error:  # an unknown flag, a bad space, a stopped sweep: one line, as train.py's
        raise SystemExit(exit_status(error)) from None
