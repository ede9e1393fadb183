"""A callback for the tests of sweeps with several workers: every worker takes a trial, however unevenly they start.

Each run that begins training marks ``folder`` with its process id and waits there until runs of ``processes``
different processes have begun: so the first worker's first trial waits for the second worker's, which a fast
first worker would otherwise leave nothing to do. A ``fast_dev_run`` (the sweep's own check, in its process) does
not wait. Found on ``PYTHONPATH`` (``tests/``), as the sweep's workers are started with the tests' environment.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L


class Rendezvous(L.Callback):
    """Wait at the start of training until runs of ``processes`` processes have begun (at most ``timeout`` s)."""

    def __init__(self, folder: str, processes: int = 2, timeout: float = 120.0) -> None:
        self.folder, self.processes, self.timeout = Path(folder), processes, timeout

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(trainer, "fast_dev_run", False):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / str(os.getpid())).touch()
        deadline = time.monotonic() + self.timeout
        while len(list(self.folder.iterdir())) < self.processes and time.monotonic() < deadline:
            time.sleep(0.05)
