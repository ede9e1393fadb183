"""Reading the clock inside a run: at the ends of training steps, and when the first step starts."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the GPU has finished the step, not just been given it


class _Ticks:
    """The clock read at the ends of steps ``start``, ``start + every``, … ``stop``; the step time is that of the
    fastest window of ``every`` steps.

    Why the fastest: on a shared machine another process takes the CPU now and then, and a window it hit is slower
    for reasons that are not the run's. Each window holds the same periodic work (``every`` a multiple of the run's
    validation, checkpoint and logging periods), so the fastest is still the run's whole cost per step.
    """

    def __init__(self, start: int, stop: int, every: int | None) -> None:
        self.start, self.stop = start, stop
        self.every = every or stop - start
        if self.every <= 0 or (stop - start) % self.every:
            raise ValueError(f"every={self.every} must divide stop - start = {stop - start}")
        self._ticks: dict[int, float] = {}

    def timed(self, steps_ended: int) -> bool:
        return self.start <= steps_ended <= self.stop and (steps_ended - self.start) % self.every == 0

    def tick(self, steps_ended: int) -> None:
        self._ticks[steps_ended] = time.perf_counter()

    @property
    def per_step_s(self) -> float:
        ends = range(self.start, self.stop, self.every)
        return min(self._ticks[end + self.every] - self._ticks[end] for end in ends) / self.every


class StepClock(L.Callback):
    """Times the steps ``start + 1 … stop`` of a Lightning run: ``per_step_s`` is the mean wall time of a step in
    the fastest window of ``every`` steps (all of them by default).

    Also records ``first_step_at`` (``time.time()`` when step 0 begins), for start-up. Every contestant
    carries one, so its own cost (a comparison per step) is in every row alike.

    Args:
        start: The clock starts when this many steps have ended.
        stop: It stops when this many have.
        every: The length of a window, a divisor of ``stop - start``.
    """

    def __init__(self, start: int = 200, stop: int = 2200, every: int | None = None) -> None:
        self.first_step_at: float | None = None
        self._ticks = _Ticks(start, stop, every)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.time()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._ticks.timed(trainer.global_step):
            _sync(pl_module.device)
            self._ticks.tick(trainer.global_step)

    @property
    def per_step_s(self) -> float:
        return self._ticks.per_step_s


class LoopClock:
    """The same for a hand-written loop: call it after each update with the 0-based step ``t``."""

    def __init__(self, start: int, stop: int, device: torch.device, every: int | None = None) -> None:
        self.device = device
        self.first_step_at = time.time()  # made just before the loop's first step
        self._ticks = _Ticks(start, stop, every)

    def __call__(self, t: int) -> None:
        if self._ticks.timed(t + 1):
            _sync(self.device)
            self._ticks.tick(t + 1)

    @property
    def per_step_s(self) -> float:
        return self._ticks.per_step_s
