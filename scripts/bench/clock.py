"""Reading the clock inside a run: between the ends of two training steps, and when the first step starts."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU has finished the step, not just been given it


class StepClock(L.Callback):
    """Times the steps ``start + 1 … stop`` of a Lightning run: ``per_step_s`` is their mean wall time.

    Also records ``first_step_at`` (``time.time()`` when step 0 begins), for start-up. Every contestant
    carries one, so its own cost (a comparison per step) is in every row alike.

    Args:
        start: The clock starts when this many steps have ended.
        stop: It stops when this many have.
    """

    def __init__(self, start: int = 200, stop: int = 2200) -> None:
        self.start, self.stop = start, stop
        self.first_step_at: float | None = None
        self._ticks: dict[int, float] = {}

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step in (self.start, self.stop):
            _sync(pl_module.device)
            self._ticks[trainer.global_step] = time.perf_counter()

    @property
    def per_step_s(self) -> float:
        return (self._ticks[self.stop] - self._ticks[self.start]) / (self.stop - self.start)


class LoopClock:
    """The same for a hand-written loop: call it after each update with the 0-based step ``t``."""

    def __init__(self, start: int, stop: int, device: torch.device) -> None:
        self.start, self.stop, self.device = start, stop, device
        self.first_step_at = time.time()  # made just before the loop's first step
        self._ticks: dict[int, float] = {}

    def __call__(self, t: int) -> None:
        if t + 1 in (self.start, self.stop):
            _sync(self.device)
            self._ticks[t + 1] = time.perf_counter()

    @property
    def per_step_s(self) -> float:
        return (self._ticks[self.stop] - self._ticks[self.start]) / (self.stop - self.start)
