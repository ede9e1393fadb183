"""Keeping a run safe: a diverged run stops at once, an interrupted one stops cleanly, the final state is saved.

Lightning 2.6 leaves gaps that a template must not pass on to its users:

- A loss that turns NaN keeps training (EarlyStopping's finite check only runs at validation or epoch end,
  which inside one long epoch may be never), and checkpoints of the broken model overwrite good ones.
- Ctrl-C, SIGTERM or SIGHUP in the middle of a step can land between two parameter updates, SIGTERM exits with
  status 0, SIGHUP kills the process, and no checkpoint of the last completed step is written.
- ``last.ckpt`` holds the last *scheduled* save, which need not be the final step.

:class:`RunGuard` closes them for any LightningModule: it checks the loss ``training_step`` returns and every
parameter after every step, turns SIGINT/SIGTERM/SIGHUP into a stop at the next step boundary with a checkpoint
(see :mod:`litpoly.signals`), and saves ``last.ckpt`` at the end of training.
(:class:`~litpoly.plugins.AtomicCheckpointIO` makes sure no checkpoint is half-written or holds non-finite weights.)
"""

from __future__ import annotations

import contextlib
import math
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from litpoly import signals, slurm
from litpoly.callbacks.lagged import LaggedReads, Reading
from litpoly.console import say, step_loss
from litpoly.errors import Diverged, Interrupted

#: Steps without any weight changing, after which a run is said to have stalled.
STALL_STEPS = 50


class RunGuard(L.Callback):
    """Stops a diverged run at once, interrupts cleanly on SIGINT/SIGTERM/SIGHUP, and saves the final state.

    A step has diverged when its loss, or any parameter after its update, is NaN or infinite, or when the
    loss exceeds ``divergence_threshold`` (as EarlyStopping's ``divergence_threshold``, but checked every
    step): training stops with one line saying where and why (exit status 1), and no checkpoint of the
    diverged model is written. On an accelerator the check reads each step's values one step late, without making
    the host wait for the step (:mod:`~litpoly.callbacks.lagged`); before any checkpoint is written, and at every
    validation, it waits for the last one: the step named is still the one that diverged. A run whose weights stop
    changing altogether (updates that round away in a narrow dtype, a zero lr) gets a one-line warning.

    A signal during training stops the run at the end of its step, with ``last.ckpt`` saved; a second Ctrl-C stops
    it at once. One that comes after the last step, while the run saves its final state, lets it finish saving and
    then stops the command (:class:`~litpoly.errors.Interrupted` with ``finished``).

    Args:
        check_finite: Check the loss and every parameter after every step.
        divergence_threshold: Also stop when a step's loss exceeds this value (a loss that climbs far past
            where it started without reaching infinity). ``None``: no threshold.
        read_late: Read each step's values one step late, without making the host wait for the step (see above).
            ``None``: on an accelerator, not on the CPU (where reading them at once costs less).
    """

    def __init__(
        self, check_finite: bool = True, divergence_threshold: float | None = None, read_late: bool | None = None
    ) -> None:
        if divergence_threshold is not None and math.isnan(divergence_threshold):
            raise ValueError("Expected `guard.divergence_threshold` to be a number or null, got nan")
        self.check_finite = check_finite
        self.divergence_threshold = divergence_threshold
        self.read_late = read_late
        self._parameters: list[torch.Tensor] = []
        self._sum_dtypes: list[torch.dtype] = []  # the dtype each parameter's sum is taken in
        self._last_sums: list[float] = []  # each weight tensor's sum after the last step
        self._unchanged_since: int | None = None  # the step since which no weight has changed
        self._stall_said = False  # the stall warning is said once a run
        self._handlers = contextlib.ExitStack()  # the signal handlers of training, while installed
        self._lagged_reads = LaggedReads()  # on an accelerator: the step whose values are on their way to the host

    @staticmethod
    def last_checkpoint(trainer: L.Trainer) -> Path | None:
        """The run's ``last.ckpt`` (``None`` when checkpointing is off)."""
        callback = trainer.checkpoint_callback
        if not isinstance(callback, ModelCheckpoint) or not callback.dirpath:
            return None
        return Path(callback.last_model_path or Path(callback.dirpath) / "last.ckpt")

    def _save_last(self, trainer: L.Trainer) -> Path | None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):  # fast_dev_run writes nothing
            return None
        path = self.last_checkpoint(trainer)
        if path is not None:
            trainer.save_checkpoint(path, weights_only=False)
        return path

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_signal_handlers()
        self._parameters = [p for p in pl_module.parameters() if p.is_floating_point()]
        self._sum_dtypes = [torch.float32 if p.element_size() < 4 else p.dtype for p in self._parameters]
        self._last_sums, self._unchanged_since, self._stall_said = [], None, False
        self._lagged_reads.discard()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = step_loss(outputs)
        if self.read_late or (self.read_late is None and pl_module.device.type != "cpu"):
            self._check_lagged(trainer, pl_module.device, loss)
            return
        diverged: str | None = None
        if self.check_finite and loss is not None:
            diverged = self._divergence(trainer, loss)
        interrupted = signals.received() is not None
        if trainer.world_size > 1:
            # Under DDP every decision to stop is agreed by all processes (a collective, so only there):
            # a process stopping alone would leave the others waiting in the next gradient all-reduce,
            # and a signal often reaches one process only (SIGTERM to the launcher).
            if trainer.strategy.reduce_boolean_decision(diverged is not None, all=False) and diverged is None:
                diverged = "another process diverged"
            interrupted = trainer.strategy.reduce_boolean_decision(interrupted, all=False)
        if diverged is not None:
            self._stop_diverged(trainer, diverged, trainer.global_step - 1)
        if interrupted:
            self._stop_interrupted(trainer)

    def _sums(self) -> list[torch.Tensor]:
        # Half-precision weights are summed in float32: float16's sum of a large tensor overflows to inf.
        return [p.detach().sum(dtype=dtype) for p, dtype in zip(self._parameters, self._sum_dtypes, strict=True)]

    def _check_lagged(self, trainer: L.Trainer, device: torch.device, loss: torch.Tensor | None) -> None:
        """The accelerator's path: this step's loss and sums are queued for the host, the previous step's are
        judged. Under DDP the processes' verdicts (diverged here, a signal here) are summed on the device, so
        every process reads the same ones at the same step, again without waiting."""
        values = None
        if self.check_finite and loss is not None:
            values = torch.stack([loss.detach().float().sum(), *(s.float() for s in self._sums())])
        checked = values is not None
        distributed = trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            bad = torch.zeros((), device=device) if values is None else self._bad_on_device(values)
            votes = torch.stack([bad, torch.full((), float(signals.received() is not None), device=device)])
            torch.distributed.all_reduce(votes)  # not the strategy's reduce: that one waits at a barrier first
            values = votes if values is None else torch.cat([values, votes])
        reading = (
            self._lagged_reads.submit((trainer.global_step, checked, distributed), values)
            if values is not None
            else self._lagged_reads.drain()
        )
        if reading is not None:
            self._judge_reading(trainer, reading)
        if not distributed and signals.received() is not None:
            self._stop_interrupted(trainer)  # its save drains the reading just queued (on_save_checkpoint)

    def _bad_on_device(self, values: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(values).all()
        if self.divergence_threshold is not None:
            bad = bad | (values[0] > self.divergence_threshold)
        return bad.float()

    def _judge_reading(self, trainer: L.Trainer, reading: Reading, stop_on_signal: bool = True) -> None:
        step, checked, distributed = reading.tag
        values = reading.values
        votes = values[-2:] if distributed else [0.0, 0.0]
        values = values[:-2] if distributed else values
        diverged = self._judge(trainer, values, step=step) if checked else None
        if diverged is None and votes[0] > 0:
            diverged = "another process diverged"
        if diverged is not None:
            self._stop_diverged(trainer, diverged, step - 1)
        if votes[1] > 0 and stop_on_signal:
            self._stop_interrupted(trainer)

    def _drain(self, trainer: L.Trainer, stop_on_signal: bool = True) -> None:
        """Judge the reading in flight, waiting for it: before anything is saved, validated, or training ends."""
        if (reading := self._lagged_reads.drain()) is not None:
            self._judge_reading(trainer, reading, stop_on_signal)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # No checkpoint of a step not yet judged: a diverged one raises here, before the write. (A signal's votes
        # are left to the step's end: this save may be the one a signal asked for.)
        self._drain(trainer, stop_on_signal=False)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._drain(trainer)

    def _watch_for_a_stall(self, trainer: L.Trainer, sums: list[float], step: int) -> None:
        """A run whose weights stop changing trains nothing, and should say so: once a run, the first time no weight
        tensor's sum has changed for ``STALL_STEPS`` steps (the sums are read for the divergence check anyway).
        (Near the optimum, float32 SGD stalls, moves a weight by one rounding step now and then, and stalls again:
        one warning says it.)"""
        if self._stall_said:
            return
        if sums != self._last_sums:
            self._last_sums, self._unchanged_since = sums, step
        elif self._unchanged_since is not None and step - self._unchanged_since >= STALL_STEPS:
            dtypes = ", ".join(sorted({str(p.dtype).removeprefix("torch.") for p in self._parameters}))
            say(
                f"Warning: the weights have not changed since step {self._unchanged_since} ({STALL_STEPS} steps): "
                f"the updates are too small to change weights held in {dtypes}, or no gradient reaches them "
                f"({self._optimizers(trainer)}). From here on this run trains little or nothing.",
                stderr=True,
            )
            self._stall_said = True

    def _divergence(self, trainer: L.Trainer, loss: torch.Tensor) -> str | None:
        """The CPU's path: :meth:`_judge` this step, its values read at once (one by one: cheaper than stacking)."""
        return self._judge(trainer, [loss.detach().sum().item(), *(s.item() for s in self._sums())])

    def _judge(self, trainer: L.Trainer, values: list[float], step: int | None = None) -> str | None:
        """What is wrong with a step, if anything, from its loss and the sum of each parameter tensor (``values``,
        in that order: a NaN or an infinity anywhere in a tensor makes its sum non-finite)."""
        loss_value, *parameter_sums = values
        self._watch_for_a_stall(trainer, parameter_sums, trainer.global_step if step is None else step)
        if not math.isfinite(loss_value):
            return f"the loss is {loss_value}"
        if not all(math.isfinite(s) for s in parameter_sums):
            return "the parameters are no longer finite"
        if self.divergence_threshold is not None and loss_value > self.divergence_threshold:
            return f"the loss {loss_value:.6g} exceeds `guard.divergence_threshold` {self.divergence_threshold:g}"
        return None

    @staticmethod
    def _optimizers(trainer: L.Trainer) -> str:
        return "; ".join(f"{type(o).__name__}, lr={o.param_groups[0]['lr']:g}" for o in trainer.optimizers)

    def _stop_diverged(self, trainer: L.Trainer, what: str, step: int) -> None:
        optimizers = self._optimizers(trainer)
        last = self.last_checkpoint(trainer)
        kept = (
            f" Last good checkpoint: {last}."
            if last is not None and last.is_file()
            else " No checkpoint was written before it."
        )
        raise Diverged(f"training diverged at step {step}: {what} ({optimizers}).{kept}", step=step)

    def _stop_interrupted(self, trainer: L.Trainer) -> None:
        signum = signals.received() or signal.SIGTERM  # None: another process got it
        step = trainer.global_step
        path = self._save_last(trainer)
        name = signal.Signals(signum).name
        if path is None:
            message = f"{name}: stopped after step {step}; checkpointing is off, so nothing was saved."
        else:
            message = (
                f"{name}: stopped after step {step}; checkpoint saved to {path}. "
                f"Resume with the same settings plus: --ckpt_path {path}"
            )
        raise Interrupted(message, signum=signum)

    def _install_signal_handlers(self) -> None:
        """The command line's handling, in place of Lightning's SIGTERM handler while training: that one would stop
        the run at the end of the epoch (which may be hours away), from inside its loop, with exit status 0."""
        self._handlers.close()
        self._handlers.enter_context(signals.handled(signals.deferred(), also=slurm.stops()))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._drain(trainer)
        self._parameters, self._last_sums = [], []

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint's last.ckpt holds the last *scheduled* save (every `every_n_train_steps`, or
        # after a validation), which need not be the final step. Overwrite it with the final state once
        # ModelCheckpoint is done (on_fit_end runs after every callback's on_train_end). The handlers stay until
        # it is written: a signal after the last step waits for the save, then stops the command.
        path = self._save_last(trainer)
        self._handlers.close()
        if (signum := signals.received()) is not None:
            saved = f", saved to {path}" if path is not None else ""
            name = signal.Signals(signum).name
            raise Interrupted(
                f"{name} after the last step ({trainer.global_step}): the run is complete{saved}.",
                signum=signum,
                finished=True,
            )

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._handlers.close()
        self._lagged_reads.discard()
        self._parameters = []
