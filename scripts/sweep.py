"""Sweep hyperparameters with Optuna: each trial an ordinary ``train.py fit`` run, the study in a database.

    python scripts/sweep.py configs/sweeps/lr.yaml                      # SGD's lr on the example, 16 trials
    python scripts/sweep.py configs/sweeps/lr.yaml --workers 2          # two worker processes, one study
    python scripts/sweep.py configs/sweeps/lr.yaml --storage postgresql://user:pw@host/db   # workers anywhere

The same command after Ctrl-C, SIGKILL or a crash goes on with the same study: finished trials are kept, an
interrupted one is marked failed and its settings tried again. Trials print as they finish; at the end, the best
trial's settings and the ``train.py`` command that reproduces it. See ``litpoly.sweep`` for the space file.
"""

from __future__ import annotations

from pathlib import Path

from jsonargparse import auto_cli

from litpoly.sweep import sweep

#: The project's default run, as train.py uses it: the base of a space whose args name no model or data class.
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"


def main(
    space: Path, storage: str | None = None, workers: int = 1, trials: int | None = None,
    logs: Path = Path("lightning_logs"),
) -> None:  # fmt: skip
    """Run or resume the sweep a search-space file describes.

    Args:
        space: The search-space YAML file (e.g. configs/sweeps/lr.yaml).
        storage: The study's database URL (sqlite:///…, postgresql://…). Default: study.db in the sweep's folder.
        workers: Worker processes on this machine, each running trials in turn.
        trials: Finished trials the study is to have (default: the space file's `trials`).
        logs: The folder the sweep's folder goes in (lightning_logs/sweeps/<name>/).
    """
    sweep(space, DEFAULT_CONFIG, storage=storage, workers=workers, trials=trials, logs=logs)


if __name__ == "__main__":
    auto_cli(main, as_positional=True)
