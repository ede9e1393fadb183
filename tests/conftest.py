"""Fixtures and pytest hooks; what the tests share otherwise (problems, helpers) is in ``helpers.py``.

Every CLI test runs in its own temporary folder, like a fresh clone (the ``run_cli`` fixture).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import PROBLEMS, Problem, RunCLI
from litpoly import compat
from litpoly.cli import DEFAULT_CONFIG, main
from litpoly.cli.litcli import LitCLI

# One thread per process, in the tests and in every process they start: pytest-xdist already runs a worker per
# core, and torch's own threads on top would oversubscribe the cores (waiting OpenMP threads spin), which costs
# the suite a fifth of its time. A thread count set by the caller stands.
if os.environ.setdefault("OMP_NUM_THREADS", "1").isdigit():
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# What litpoly's Trainer does to its process, done for the tests' own optimizer loops too (the long runs' replicas
# of the example's arithmetic): no search for NVIDIA's library at every Adam or RMSprop step where it is missing.
compat.cuda_check_without_nvml()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests first (each keeps its place among them): with a worker per core (pytest-xdist), the many
    short tests then fill in at the end, rather than one long test running on alone while the other cores idle."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True)
def _mlflow_tracking_uri_as_it_was() -> Any:
    """Put ``MLFLOW_TRACKING_URI`` back after each test: Lightning's MLflow logger calls ``mlflow.set_tracking_uri``,
    which sets it in this process's environment for its subprocesses, so a later test's processes (a sweep's
    workers) would log to a store, or a server, that an earlier test had."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(params=PROBLEMS, ids=str)
def problem(request: pytest.FixtureRequest) -> Problem:
    """Each of the problems in turn."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunCLI:
    """Call :func:`litpoly.cli.main` as ``scripts/train.py`` does, from inside ``tmp_path`` (so ``lightning_logs/``
    lands there), without a progress bar."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py"])  # LightningCLI warns when pytest's own argv is there too

    def run(*args: str, progress_bar: bool = False) -> LitCLI:
        flags = [] if progress_bar else ["--trainer.enable_progress_bar", "false"]
        return main([*args, *flags], DEFAULT_CONFIG)

    return run


@pytest.fixture(scope="session")
def _short_tmp_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="litpoly-"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def short_tmp(_short_tmp_base: Path) -> Path:
    """An empty folder with a short path, kept to the end of the session: the temporary folder (``TMPDIR``,
    ``tempfile.tempdir``) for code that starts DataLoader workers. multiprocessing makes its Unix sockets there, whose
    paths may not pass 107 bytes: under pytest's ``tmp_path`` (deep, named after the test) a worker cannot send its
    batch ("AF_UNIX path too long"), the batch is lost, and the run waits for it for ever. Kept to the end: a process
    reuses the folder it first made its sockets in."""
    return Path(tempfile.mkdtemp(dir=_short_tmp_base))
