"""Shared fixtures: every CLI test runs in its own temporary folder, like a fresh clone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from litpoly.cli import LitPolyCLI, cli_main

REPO = Path(__file__).resolve().parents[1]

RunCLI = Callable[..., LitPolyCLI]


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunCLI:
    """Call ``cli_main`` from inside ``tmp_path`` (so ``lightning_logs/`` lands there), without a progress bar."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py"])  # LightningCLI warns when pytest's own argv is there too

    def run(*args: str, progress_bar: bool = False) -> LitPolyCLI:
        flags = [] if progress_bar else ["--trainer.enable_progress_bar", "false"]
        return cli_main([*args, *flags])

    return run


def least_squares(num_samples: int = 2000, degree: int = 3) -> tuple[np.ndarray, float]:
    """The closed-form optimum, computed here with numpy alone: an independent witness for training runs."""
    x = np.linspace(-np.pi, np.pi, num_samples)
    vander = np.vander(x, degree + 1, increasing=True)
    w, *_ = np.linalg.lstsq(vander, np.sin(x), rcond=None)
    return w, float(np.sum((vander @ w - np.sin(x)) ** 2))
