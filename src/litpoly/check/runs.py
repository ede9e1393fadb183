"""The check's short training runs: ``fit`` through the command line, each in a folder of its own, quietly.

The runs on one process go through :func:`~litpoly.cli.run` in this process (a second interpreter would import
Lightning again for each), the DDP run through ``scripts/train.py`` in a subprocess (Lightning launches the other
processes by running that script again). What a run prints goes to a log file: the check's own table is what the
user reads. A run that fails says why in one line (:class:`CheckError`): for the reference run, the check's own
error; for a later one, its property's failure.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn

from litpoly.callbacks.resume import rng_states
from litpoly.check.measure import difference
from litpoly.cli import run
from litpoly.cli.litcli import LitCLI
from litpoly.console import output_to
from litpoly.errors import Interrupted, RunError

#: Flags of every run of the check: its own folder, no logger (a config's MLflow or W&B logger would record the
#: check's runs as the project's), no progress bar, and the final state saved in ``last.ckpt``.
QUIET = ("--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "true",
         "--checkpoint.save_last", "true", "--trainer.fast_dev_run", "false")  # fmt: skip
ONE_PROCESS = ("--trainer.strategy", "auto", "--trainer.devices", "1", "--trainer.num_nodes", "1")
DDP_CPU = ("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.num_nodes", "1",
           "--trainer.accelerator", "cpu")  # fmt: skip


class CheckError(RunError):
    """Something the check needed failed (its flags, a run): one line for the user, exit status 2 when the check
    cannot run at all; a property's failure when a later run fails."""

    exit_code = 2


class InterruptAt(L.Callback):
    """Ctrl-C, sent to this process at the end of step ``step``: the run layer stops after the next step, with a
    checkpoint, as it does for a user's Ctrl-C (its guard reads the signal at the end of a step, before this)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


#: The dropout layers :class:`NoDropout` switches off.
DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class NoDropout(L.Callback):
    """Switches every dropout layer off (``p = 0``) when training starts.

    For the DDP comparison only: each process draws its own dropout masks, so two processes equal one process
    in distribution, never in value; without the draws, what is compared is the data split and the averaging
    of gradients, which must be exact.
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for module in pl_module.modules():
            if isinstance(module, DROPOUT):
                module.p = 0.0


def clone(batch: Any) -> Any:
    """A copy of every tensor in ``batch``, detached."""
    return apply_to_collection(batch, Tensor, lambda t: t.detach().clone())


class Watch(L.Callback):
    """What the check needs to know of a run: the starting weights, the first training batch as the training step
    got it (on its device, in its dtype), and whether a step draws random numbers from the global generators."""

    def __init__(self) -> None:
        self.initial: dict[str, Tensor] | None = None
        self.batch: Any = None
        self.draws = False
        self._before: dict[str, Any] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.initial = clone(pl_module.state_dict())

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        if self.batch is None:
            self.batch = clone(batch)
        self._before = rng_states()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not self.draws and self._before is not None and difference(self._before, rng_states()):
            self.draws = True


def last_checkpoint(root: Path) -> Path:
    """The ``last.ckpt`` of the one run under ``root``."""
    found = sorted(root.glob("**/checkpoints/last.ckpt"))
    if not found:
        raise CheckError(f"the run in {root} saved no checkpoints/last.ckpt")
    return found[0]


@dataclass
class Runner:
    """Starts the check's runs: the user's flags, then the check's own (the last of a flag given twice wins).

    Attributes:
        args: The user's ``train.py fit`` flags.
        schedule: The flags of the short schedule.
        folder: The temporary folder every run gets its own folder in.
        train_script: ``scripts/train.py``, for the DDP run.
        default_config: The project's default run, as ``train.py`` passes it.
        say: Prints one line of progress.
    """

    args: Sequence[str]
    schedule: Sequence[str]
    folder: Path
    train_script: Path
    default_config: Path | None
    say: Callable[[str], None] = print
    output: list[str] = field(default_factory=list)  # what the last run printed

    @property
    def log(self) -> Path:
        return self.folder / "runs.log"

    def flags(self, name: str, *extra: str) -> list[str]:
        root = self.folder / name
        return ["fit", *self.args, *QUIET, *self.schedule, "--trainer.default_root_dir", str(root), *extra]

    def fit(self, name: str, *extra: str, callbacks: Sequence[L.Callback] = ()) -> LitCLI:
        """Run ``fit`` on one process in ``folder/name``, to the end of its schedule.

        Raises:
            CheckError: The run ended in an error (its own line).
        """
        cli = self._fit(name, extra, callbacks, interrupt=False)
        assert cli is not None
        return cli

    def interrupted(self, name: str, stop: int, *extra: str) -> Path:
        """Run ``fit`` on one process in ``folder/name``, stopped by Ctrl-C after step ``stop``; its ``last.ckpt``.

        Raises:
            CheckError: The run ended in an error, or was not interrupted.
        """
        self._fit(name, extra, [InterruptAt(stop - 1)], interrupt=True)
        return last_checkpoint(self.folder / name)

    def _fit(self, name: str, extra: Sequence[str], callbacks: Sequence[L.Callback], interrupt: bool) -> LitCLI | None:
        """One run, told apart by what :func:`~litpoly.cli.run` raises: ``Interrupted`` by SIGINT where ``interrupt``
        (the check's own Ctrl-C), else the user's (``KeyboardInterrupt``); any other error a ``CheckError``."""
        started = time.perf_counter()
        offset = self.log.stat().st_size if self.log.exists() else 0
        cli: LitCLI | None = None
        try:
            with output_to(self.log):
                cli = run(self.flags(name, *ONE_PROCESS, *extra), self.default_config, callbacks)
        except Interrupted as stop:
            if not (interrupt and stop.signum == signal.SIGINT):  # the user's Ctrl-C, turned into a stop
                raise KeyboardInterrupt from None
        except RunError as error:  # a setting refused during setup, a diverged run: its own line
            raise CheckError(str(error)) from None
        except SystemExit as exit_:
            self.output = self._printed(offset)
            raise CheckError(self._exited(name, exit_.code)) from None
        except Exception as error:  # the user's code failed: the check cannot measure anything of it
            raise CheckError(
                f"the run {name} failed: {type(error).__name__}: {error} (train.py fit with the same flags shows where)"
            ) from None
        finally:
            self.output = self._printed(offset)
        if interrupt and cli is not None:
            last = self.output[-1] if self.output else "nothing printed"
            raise CheckError(f"the run {name} was to be stopped by Ctrl-C, and ran to its end: {last}")
        self.say(f"  run {name}: {time.perf_counter() - started:.1f} s")
        return cli

    def _printed(self, offset: int) -> list[str]:
        with self.log.open("rb") as file:
            file.seek(offset)
            return file.read().decode(errors="replace").splitlines()

    def _exited(self, name: str, code: int | str | None) -> str:
        """Why a run that Lightning itself ended (``sys.exit``) stopped: a Ctrl-C before training began, which leaves
        SIGINT ignored (``KeyboardInterrupt``, its handler back), or what the run printed last."""
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        return f"the run {name} ended with exit status {code}: {self.output[-1] if self.output else 'nothing printed'}"

    def fit_ddp(self, name: str, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run ``fit`` on two processes on the CPU in ``folder/name``, through ``scripts/train.py``."""
        started = time.perf_counter()
        command = [sys.executable, str(self.train_script), *self.flags(name, *DDP_CPU, *extra)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            raise CheckError(f"the run {name} did not finish in {timeout:.0f} s") from None
        with self.log.open("a") as file:
            file.write(result.stdout + result.stderr)
        self.say(f"  run {name}: {time.perf_counter() - started:.1f} s")
        return result
