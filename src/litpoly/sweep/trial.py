"""One trial: an ordinary ``fit`` through :func:`litpoly.cli.run`, its end told by the type of what it raises.

A trial's run reports its metric to Optuna after every validation (:class:`ReportToTrial`); a :class:`Diverged`
run ends *pruned* with its one line, a run that fails otherwise ends *failed* with its reason, and an
:class:`Interrupted` one stops the sweep. :func:`check` runs the space's first settings once before any study
exists, to refuse a space that cannot work in one line.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import tempfile
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import lightning as L
import yaml

from litpoly.cli import run
from litpoly.console import output_to
from litpoly.errors import Diverged, Interrupted, RunError, SettingError
from litpoly.runs import RUN_VERSION
from litpoly.sweep.space import SearchSpace, command


class TrialFailed(Exception):
    """A trial's run ended with an error that is not about its settings' quality (recorded, the sweep goes on)."""


class ReportToTrial(L.Callback):
    """Reports the metric to an Optuna trial after every validation, at the step the loggers record it at (so a
    trial's reports line up with its TensorBoard curve); raises ``TrialPruned`` when Optuna's pruner says so."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.last: float | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import optuna

        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        self.last = float(value)
        step = trainer.global_step - 1  # the last training step's index: the step Lightning logs this metric at
        self.trial.report(self.last, step=step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {self.metric} {self.last:.6g}")


def reason(error: BaseException) -> str:
    """Why a run stopped, on one line without ``error:`` (a trial's record, the trial's printed line)."""
    if isinstance(error, RunError):
        return error.line.removeprefix("error: ")
    return " ".join(f"{type(error).__name__}: {error}".split())


def run_trial(
    trial: Any, space: SearchSpace, folder: Path, default_config: Path | None, stop_after: Callable[[], None]
) -> float:
    """Run one trial as an ordinary ``fit`` in this process; its metric's last validated value is the result.

    Its run folder is ``<folder>/lightning_logs/trial_<n>`` (named through ``$LITPOLY_RUN_VERSION``, so that
    parallel workers never pick the same ``version_N``), and what it prints goes to ``<folder>/trial_<n>.log``.
    A :class:`Diverged` run ends *pruned*, its line recorded as ``diverged``; a run that fails otherwise (a setting
    only the run finds wrong, an error in the model) ends *failed*, its line recorded as ``error``, and the sweep
    goes on; Ctrl-C or SIGTERM (:class:`Interrupted`) stops the sweep (``KeyboardInterrupt``). A signal that came
    once the run had trained its last step leaves its result standing: the trial completes, and ``stop_after()``
    asks the sweep to stop after it.
    """
    import optuna

    values = {name: param.suggest(trial, name) for name, param in space.params.items()}
    name = f"trial_{trial.number}"
    trial.set_user_attr("command", command(space, values))
    trial.set_user_attr("run_folder", str(folder / "lightning_logs" / name))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    report = ReportToTrial(trial, space.metric)
    log = folder / f"{name}.log"
    try:
        with output_to(log), mock.patch.dict(os.environ, {RUN_VERSION: name}):
            run([*space.flags(values), "--trainer.default_root_dir", str(folder)], default_config, [report])
    except optuna.TrialPruned:
        raise
    except Diverged as error:  # a NaN, an inf, or past --guard.divergence_threshold: the sampler learns the region
        trial.set_user_attr("diverged", reason(error))
        raise optuna.TrialPruned(reason(error)) from None
    except Interrupted as stop:  # Ctrl-C or SIGTERM, the run stopped cleanly at a step's end: the trial fails
        if not (stop.finished and report.last is not None):
            raise KeyboardInterrupt from None
        stop_after()
    except RunError as error:
        _failed(trial, reason(error))
    except SystemExit as stop:
        _stopped_by_lightning(trial, stop)
    except Exception as error:  # the model's or the data's own error: recorded, with its traceback in the log
        with log.open("a") as file:
            traceback.print_exc(file=file)
        _failed(trial, reason(error))
    if report.last is None:
        _failed(trial, f"the run logged no `{space.metric}` at any validation")
    return report.last


def _stopped_by_lightning(trial: Any, stop: SystemExit) -> NoReturn:
    """Lightning's own exit: a Ctrl-C before training began (the run layer's guard was not watching yet) ends the
    run with exit status 1 and SIGINT left ignored; the sweep stops, with SIGINT's handler back."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None
    _failed(trial, f"the run exited with status {stop.code}")


def _failed(trial: Any, why: str) -> NoReturn:
    trial.set_user_attr("error", why)
    raise TrialFailed(why)


# -- the check before a study: the space's first settings, once ---------------------------------------------------


class _Probe(L.Callback):
    """Collects every single-valued metric logged at validation."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})


def check(space: SearchSpace, default_config: Path | None) -> None:
    """Refuse a space ``train.py`` cannot run: every flag and value of the space, one process a trial, the metric.

    Every value is parsed as ``train.py fit`` would (``--print_config``: nothing runs); a trial must run in one
    process (it runs inside a worker: Lightning's DDP launcher would start the sweep again in every process); then
    the first settings run once as ``fast_dev_run`` (one step, one validation, nothing written) to see the metric
    logged.

    Raises:
        SettingError: What is wrong, in one line.
    """
    first = {name: param.probes()[0] for name, param in space.params.items()}
    trials = [first | {name: value} for name, param in space.params.items() for value in param.probes()]
    probe = _Probe()
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "check.log"
        for values in trials:
            with warnings.catch_warnings():  # the printed config alone, to read back
                warnings.simplefilter("ignore")
                config = _check_run([*space.flags(values), "--print_config"], default_config, log, [])
            if not isinstance(config, dict):
                raise SettingError(f"cannot read the config of the search space's run back: {log.read_text()[:200]!r}")
            _one_process(config.get("trainer") or {})
        flags = [*space.flags(first), "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", scratch]
        _check_run(flags, default_config, log, [probe])
    if space.metric not in probe.seen:
        logged = ", ".join(sorted(probe.seen)) or "nothing"
        raise SettingError(f"`metric` {space.metric!r} is not logged at validation by this run; it logs: {logged}")


def _one_process(trainer: dict[str, Any]) -> None:
    devices, strategy = trainer.get("devices"), str(trainer.get("strategy"))
    if _processes(devices) > 1 or int(trainer.get("num_nodes") or 1) > 1 or "ddp" in strategy.lower():
        raise SettingError(
            f"a sweep runs each trial in one process (trainer.devices {devices}, trainer.strategy {strategy}): "
            "run trials side by side with --workers instead"
        )


def _processes(devices: Any) -> int:
    """How many processes ``trainer.devices`` asks for: ``auto`` and ``1`` one each (a worker sees one GPU).

    Example:
        >>> [_processes(d) for d in ("auto", 1, "2", "-1", [0, 1], "0,1", "0,")]
        [1, 1, 2, 2, 2, 2, 1]
    """
    if isinstance(devices, list):
        return len(devices)
    text = str(devices).strip()
    if "," in text:
        return len([d for d in text.split(",") if d.strip()])
    if text.lstrip("-").isdigit():
        return 2 if int(text) == -1 else int(text)  # -1: every device there is
    return 1


def _check_run(args: list[str], default_config: Path | None, log: Path, callbacks: Sequence[L.Callback]) -> Any:
    """Run ``train.py`` with ``args`` in this process, its output in ``log``. Returns what it printed, as YAML (the
    config, for ``--print_config``).

    Raises:
        SettingError: The run failed (its own line, or its exception's).
    """
    log.write_text("")
    try:
        with output_to(log):
            run(args, default_config, callbacks)
    except SystemExit as stop:  # --print_config's end (jsonargparse exits after printing)
        if stop.code not in (0, None):
            raise SettingError(f"the search space's run fails: exit status {stop.code}") from None
    except Interrupted:  # Ctrl-C: the sweep stops, as it does during a trial
        raise
    except Exception as error:  # a setting, or the model's or the data's own error at the first step
        raise SettingError(f"the search space's run fails: {reason(error)}") from None
    with contextlib.suppress(yaml.YAMLError):
        return yaml.safe_load(log.read_text())
    return None
