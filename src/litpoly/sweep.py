"""Hyperparameter sweeps on Optuna: each trial an ordinary run, the study in a database, resumable and parallel.

``python scripts/sweep.py configs/sweeps/lr.yaml`` runs the sweep a search-space file describes (see
:class:`SearchSpace`). What Optuna does, Optuna does: sampling (TPE, seeded), pruning (its ``MedianPruner``),
the study in an SQLite file or a PostgreSQL database (its RDB storage), heartbeats that fail a trial whose
process was killed, and the retry of such a trial (``RetryHeartbeatStaleTrialCallback``). What it lacks for a
Lightning template is here, in one place:

- **A trial is an ordinary litpoly run**: ``fit`` with the space's base arguments and the sampled settings as
  flags, its own run folder (``lightning_logs/sweeps/<name>/lightning_logs/trial_<n>``: config, checkpoints,
  TensorBoard, and MLflow's store beside them when the args add MLflow), its console output in
  ``trial_<n>.log``, and the ``train.py`` command that reproduces it.
- **Reports by step**: the metric is reported to Optuna after every validation at the run's step
  (optuna-integration's Lightning callback reports by epoch, and a step-counted run is a single epoch).
- **A diverged run ends pruned, with its reason** (the run's own ``error:`` line), so the sampler learns the
  region is bad and the sweep goes on; a run that fails otherwise ends failed, with its reason and traceback.
- **Exactly the planned number of finished trials** across any number of workers and restarts: a worker starts
  a trial only while fewer are finished or running than planned (one created beyond the plan, by two workers at
  the same moment, is given up before it runs).
- **Checked before anything is created**: the space file, every flag and value it names (parsed as ``train.py``
  would), one process per trial (no DDP inside a worker), the metric (a ``fast_dev_run`` of the first settings
  must log it, writing nothing) and the storage; each problem is one line and exit status 2.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shlex
import signal
import socket
import sys
import tempfile
import time
import traceback
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeGuard
from unittest import mock

import lightning as L
import torch
import yaml

from litpoly.cli import run as cli_main
from litpoly.console import without_password
from litpoly.runs import RUN_VERSION

#: Seconds between a running trial's heartbeats, and after how many without one its trial counts as dead (its
#: process was killed): then the next trial any worker starts marks it failed, and Optuna retries its settings.
HEARTBEAT_S = 2
GRACE_S = 60

FINISHED = ("COMPLETE", "PRUNED")
#: Attempts at opening a storage that another process is creating at the same moment (see ``open_storage``).
CREATE_TRIES = 5
#: The user attribute of a trial given up before it ran, beyond the planned number (see ``work``).
BEYOND_PLAN = "beyond_plan"
#: A worker process's exit status when SIGINT or SIGTERM stopped it (as a shell reports Ctrl-C), and when it
#: stopped because too many of its trials failed.
INTERRUPTED = 130
STOPPED = 3


@dataclass(frozen=True)
class Param:
    """One setting to sample: a float or int range (``low``, ``high``, ``log``, ``step``), or ``choices``."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    type: Literal["float", "int"] = "float"
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if self.type == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def probes(self) -> list[Any]:
        """Values that show whether ``train.py`` takes this setting at all: both ends, or every choice."""
        if self.choices:
            return list(self.choices)
        return [self.low, self.high] if self.type == "float" else [int(self.low or 0), int(self.high or 0)]


@dataclass(frozen=True)
class SearchSpace:
    """A sweep, as its YAML file describes it.

    Example ``configs/sweeps/lr.yaml``::

        name: sgd-lr                  # the study, and its folder lightning_logs/sweeps/sgd-lr/
        metric: val/sse               # a metric every run logs at validation; the last value is the result
        direction: minimize           # or maximize
        trials: 16                    # finished trials (complete or pruned) the study is to have
        seed: 0                       # the sampler's seed
        args: [--config, configs/sgd.yaml]    # the base command: what `train.py fit` is given
        params:
          model.lr: {low: 1.0e-7, high: 1.0e-5, log: true}
          model.optimizer: {choices: [sgd, rmsprop]}
          data.batch_size: {low: 32, high: 256, type: int, log: true}
        pruner: {n_startup_trials: 5, n_warmup_steps: 500}   # Optuna's MedianPruner; null: no pruning
    """

    name: str
    metric: str
    params: tuple[Param, ...]
    direction: Literal["minimize", "maximize"] = "minimize"
    trials: int = 20
    seed: int = 0
    args: tuple[str, ...] = ()
    pruner: dict[str, Any] | None = field(default=None)

    @classmethod
    def load(cls, path: Path) -> SearchSpace:
        """Read and check a space file.

        Raises:
            ValueError: One line naming the key and what is allowed.
        """
        try:
            content = yaml.safe_load(Path(path).read_text())
        except OSError as error:
            raise ValueError(f"cannot read the search space {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"the search space {path} is not YAML: {' '.join(str(error).split())}") from None
        if not isinstance(content, dict):
            raise ValueError(f"the search space {path} must be a mapping of name, metric, params, …")
        allowed = {"name", "metric", "direction", "trials", "seed", "args", "params", "pruner"}
        if unknown := sorted(set(content) - allowed):
            raise ValueError(f"unknown key {unknown[0]!r} in the search space {path}; allowed: {sorted(allowed)}")
        for key in ("name", "metric", "params"):
            if not content.get(key):
                raise ValueError(f"the search space {path} needs `{key}`")
        if content.get("direction", "minimize") not in ("minimize", "maximize"):
            raise ValueError(f"Expected `direction` to be minimize or maximize, got {content['direction']!r}")
        trials = content.get("trials", 20)
        if not isinstance(trials, int) or trials < 1:
            raise ValueError(f"Expected `trials` to be a positive integer, got {trials!r}")
        seed = content.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError(f"Expected `seed` to be an integer, got {seed!r}")
        pruner = content.get("pruner")
        if pruner is not None:
            import optuna

            try:
                optuna.pruners.MedianPruner(**pruner)
            except (TypeError, ValueError) as error:
                raise ValueError(f"Expected `pruner` to be MedianPruner's settings or null: {error}") from None
        args = content.get("args") or []
        if not isinstance(args, list):
            raise ValueError(f"Expected `args` to be a list of command-line words, got {args!r}")
        if not isinstance(content["params"], dict):
            raise ValueError("Expected `params` to map flags (e.g. model.lr) to ranges or choices")
        params = tuple(_param(name, spec) for name, spec in content["params"].items())
        return cls(
            name=str(content["name"]),
            metric=str(content["metric"]),
            params=params,
            direction=content.get("direction", "minimize"),
            trials=trials,
            seed=seed,
            args=tuple(str(a) for a in args),
            pruner=pruner,
        )

    def flags(self, values: dict[str, Any]) -> list[str]:
        """``train.py fit``'s arguments for a trial with these settings."""
        return ["fit", *self.args, *(word for name, value in values.items() for word in (f"--{name}", _text(value)))]


def _param(name: str, spec: Any) -> Param:
    where = f"`params.{name}`"
    if not isinstance(spec, dict):
        raise ValueError(f"Expected {where} to be {{low, high}} or {{choices}}, got {spec!r}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"Expected {where}.choices to be a non-empty list, got {choices!r}")
        if extra := sorted(set(spec) - {"choices"}):
            raise ValueError(f"{where}: `{extra[0]}` does not go with `choices`")
        return Param(name, choices=tuple(choices))
    if extra := sorted(set(spec) - {"low", "high", "log", "step", "type"}):
        raise ValueError(f"{where}: unknown key `{extra[0]}`; allowed: low, high, log, step, type, or choices")
    kind = spec.get("type", "float")
    if kind not in ("float", "int"):
        raise ValueError(f"Expected {where}.type to be float or int, got {kind!r}")
    low, high, log = spec.get("low"), spec.get("high"), bool(spec.get("log", False))
    if not (_finite(low) and _finite(high)):
        raise ValueError(f"Expected {where}.low and .high to be finite numbers, got {low!r} and {high!r}")
    if not low < high:
        raise ValueError(f"{where} is an empty range: low {low} must be below high {high}")
    step = spec.get("step")
    if kind == "int" and not all(float(v).is_integer() for v in (low, high, 1 if step is None else step)):
        raise ValueError(f"{where}: an int range needs whole numbers, got low {low}, high {high}, step {step}")
    import optuna

    try:  # the rest Optuna checks itself (a log scale above 0, no step with log, a positive step, …)
        if kind == "int":
            optuna.distributions.IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        else:
            optuna.distributions.FloatDistribution(low, high, log=log, step=step)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None
    return Param(name, low=float(low), high=float(high), log=log, step=step, type=kind)


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _text(value: Any) -> str:
    """A value as a command-line word ``train.py`` parses back to the same value."""
    return (
        value
        if isinstance(value, str)
        else yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
    )


def command(space: SearchSpace, values: dict[str, Any]) -> str:
    """The ``train.py`` command that runs a trial's settings again, as an ordinary run."""
    return shlex.join(["python", "scripts/train.py", *space.flags(values)])


def fail(message: str) -> NoReturn:
    """TEMPORARY (ported to typed errors next): one line on stderr, exit status 2."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    raise SystemExit(2)


# -- a trial ----------------------------------------------------------------------------------------------------


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


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send everything this process prints to ``path``, then back: ``sys.stdout``/``sys.stderr``, and file
    descriptors 1 and 2 (for handlers that kept the original streams, and for C code)."""
    with path.open("a", buffering=1) as log:
        streams = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        for stream in streams:
            if stream is not None:
                stream.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            for stream in (*streams, log):
                if stream is not None:
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _last_error(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("error: ")]
    return lines[-1].removeprefix("error: ") if lines else f"no reason given (see {log})"


#: How RunGuard's one line for a diverged run begins (``error: training diverged at step …``).
DIVERGED = "training diverged"


class TrialFailed(Exception):
    """A trial's run ended with an error that is not about its settings' quality (recorded, the sweep goes on)."""


def run_trial(trial: Any, space: SearchSpace, folder: Path, default_config: Path | None) -> float:
    """Run one trial as an ordinary ``fit`` in this process; its metric's last validated value is the result.

    Its run folder is ``<folder>/lightning_logs/trial_<n>`` (named through ``$LITPOLY_RUN_VERSION``, so that
    parallel workers never pick the same ``version_N``), and what it prints goes to ``<folder>/trial_<n>.log``.
    A diverged run ends *pruned*; a run that fails otherwise (a setting only the run finds wrong, an error in
    the model) ends *failed* with its reason, and the sweep goes on; Ctrl-C or SIGTERM stops the sweep.
    """
    import optuna

    values = {p.name: p.suggest(trial) for p in space.params}
    name = f"trial_{trial.number}"
    trial.set_user_attr("command", command(space, values))
    trial.set_user_attr("run_folder", str(folder / "lightning_logs" / name))
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    report = ReportToTrial(trial, space.metric)
    log = folder / f"{name}.log"
    try:
        with output_to(log), mock.patch.dict(os.environ, {RUN_VERSION: name}):
            cli_main([*space.flags(values), "--trainer.default_root_dir", str(folder)], default_config, [report])
    except optuna.TrialPruned:
        raise
    except SystemExit as stop:
        reason = _last_error(log)
        if stop.code == 1 and reason.startswith(DIVERGED):  # a NaN, an inf, or past --guard.divergence_threshold
            trial.set_user_attr("diverged", reason)
            raise optuna.TrialPruned(reason) from None
        if (isinstance(stop.code, int) and stop.code >= 128) or signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
            # Ctrl-C or SIGTERM: stopped cleanly by RunGuard (exit 128 + signal), or by Lightning itself before
            # training began (exit 1, with SIGINT left ignored). Either way the sweep stops; Optuna marks the
            # trial failed.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt from None
        _failed(trial, reason)
    except Exception as error:  # the model's or the data's own error: recorded, with its traceback in the log
        with log.open("a") as file:
            traceback.print_exc(file=file)
        _failed(trial, f"{type(error).__name__}: {error}")
    if report.last is None:
        _failed(trial, f"the run logged no `{space.metric}` at any validation")
    return report.last


def _failed(trial: Any, reason: str) -> NoReturn:
    trial.set_user_attr("error", reason)
    raise TrialFailed(reason)


# -- the study --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What every worker of a sweep needs: the space, the study's database, the sweep's folder, the defaults.

    Attributes:
        shared: The storage was given (``--storage``): workers elsewhere may share the study.
        grace_s: Seconds without a heartbeat after which a running trial counts as dead.
    """

    space: SearchSpace
    url: str
    folder: Path
    default_config: Path | None
    shared: bool
    grace_s: float = GRACE_S


def storage_url(space: SearchSpace, storage: str | None, logs: Path) -> str:
    """The study's database: ``storage`` as given, or an SQLite file in the sweep's folder."""
    return storage or f"sqlite:///{(logs / 'sweeps' / space.name / 'study.db').resolve()}"


def open_storage(url: str, grace_s: float = GRACE_S) -> Any:
    """Optuna's RDB storage at ``url``, with heartbeats, and a retry for a trial whose process was killed.

    Raises:
        ValueError: The database cannot be reached or opened (one line).
    """
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        Path(url.split(":///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 60}  # several workers take turns writing one file
    elif url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    # Each trial prints its own line (and its log has the details): Optuna's own messages, and the traceback it
    # logs for every failed trial, would repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats: stable in use
    attempt = 1
    while True:
        try:
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=int(grace_s),
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except Exception as error:  # sqlalchemy's errors for a bad URL, a refused connection, a missing driver
            if attempt < CREATE_TRIES and _created_elsewhere(error):
                attempt += 1
                time.sleep(0.5)
                continue
            reason = " ".join(str(error).split("\n(Background")[0].split())
            raise ValueError(f"cannot open the study's storage {without_password(url)}: {reason[:300]}") from None


def _created_elsewhere(error: Exception) -> bool:
    """Whether opening a new database failed because another process is creating Optuna's tables in it at this
    moment (sweeps started together on a fresh study, on several machines or in several terminals): one creates
    them, the others find a table or Optuna's version row already there. Opened again, it is complete."""
    from sqlalchemy.exc import IntegrityError

    return isinstance(error, IntegrityError) or "already exists" in str(error)


def counts(trials: list[Any]) -> Counter[str]:
    """Trials by state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``)."""
    return Counter(trial.state.name for trial in trials)


def work(
    setup: Setup, worker: int, threads: int, parent: int | None = None, stopping: Callable[[], bool] = lambda: False
) -> None:
    """One worker: start trials until the study has its planned number finished (or running elsewhere).

    ``parent``: the sweep's process, for a worker in a process of its own: it stops when the sweep is gone.
    ``stopping``: asked before each trial; true, the worker stops (raising ``KeyboardInterrupt``).
    """
    import optuna

    space = setup.space
    torch.set_num_threads(threads)
    storage = open_storage(setup.url, setup.grace_s)
    started = len(optuna.load_study(study_name=space.name, storage=storage).get_trials(deepcopy=False))
    # The space's seed for the first worker of a new sweep; a stream of settings of its own for every other worker
    # and restart (a resumed sweep does not draw its first settings again), and for every machine and process when
    # the study is shared (workers started at the same moment elsewhere).
    seed = space.seed + 1000 * worker + started
    if setup.shared:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(**space.pruner) if space.pruner is not None else optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=space.name, storage=storage, sampler=sampler, pruner=pruner)

    def objective(trial: Any) -> float:
        # Optuna numbers trials in the order they start, and has no "create a trial unless there are n": when two
        # workers count at the same moment, the later trial is beyond the plan. It is given up before it draws
        # its settings (recorded as failed, marked as never run), so the study ends with exactly the planned number.
        ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and t.state.name != "FAIL"]
        if len(ahead) >= space.trials:
            trial.set_user_attr(BEYOND_PLAN, True)
            raise TrialFailed("not run: the study already had its planned number of trials")
        return run_trial(trial, space, setup.folder, setup.default_config)

    while parent is None or os.getppid() == parent:
        if stopping():
            raise KeyboardInterrupt
        optuna.storages.fail_stale_trials(study)  # a trial whose process died: failed, its settings queued again
        trials = study.get_trials(deepcopy=False)
        states = counts(trials)
        if sum(states[s] for s in FINISHED) >= space.trials:
            break
        # Runs that failed on their own (not interrupted, not killed): a space where every run fails stops here.
        if (errors := sum("error" in t.user_attrs for t in trials)) >= max(3, space.trials):
            raise TrialFailed(f"{errors} trials failed; see their logs in {setup.folder}")
        if sum(states[s] for s in (*FINISHED, "RUNNING")) >= space.trials and not states["WAITING"]:
            time.sleep(HEARTBEAT_S)  # the rest are running (here or elsewhere): wait for them to finish or die
            continue
        study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=[_say_trial(space)])


def _say_trial(space: SearchSpace) -> Callable[[Any, Any], None]:
    """Optuna's callback after each trial: one line with its settings and result (or why it ended early)."""

    def say(study: Any, trial: Any) -> None:
        state = trial.state.name.lower()
        if trial.state.name == "COMPLETE":
            result = f"{space.metric} {trial.value:.6g}"
        else:
            result = trial.user_attrs.get("diverged") or trial.user_attrs.get("error") or ""
            result = f"pruned at step {trial.last_step}" if not result and trial.last_step is not None else result
        settings = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())
        if settings:  # a trial given up before it drew its settings (beyond the plan) says nothing
            print(f"trial {trial.number} ({state}): {settings} — {result}", flush=True)

    return say


def check(space: SearchSpace, default_config: Path | None) -> None:
    """Fail (one line, exit 2) unless ``train.py`` takes every flag and value of the space and logs its metric.

    Every value is parsed as ``train.py fit`` would (``--print_config``: nothing runs); a trial must run in one
    process (it runs inside a worker: Lightning's DDP launcher would start the sweep again in every process); then
    the first settings run once as ``fast_dev_run`` (one step, one validation, nothing written) to see the metric
    logged.
    """
    seen: dict[str, float] = {}

    class Probe(L.Callback):
        def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            seen.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})

    first = {p.name: p.probes()[0] for p in space.params}
    trials = [first | {p.name: value} for p in space.params for value in p.probes()]
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "check.log"
        for values in trials:
            with warnings.catch_warnings():  # the printed config alone, to read back
                warnings.simplefilter("ignore")
                config = _check_run([*space.flags(values), "--print_config"], default_config, log, [])
            if not isinstance(config, dict):
                fail(f"cannot read the config of the search space's run back: {log.read_text()[:200]!r}")
            trainer = config.get("trainer") or {}
            devices, strategy = trainer.get("devices"), str(trainer.get("strategy"))
            if _processes(devices) > 1 or int(trainer.get("num_nodes") or 1) > 1 or "ddp" in strategy.lower():
                fail(
                    f"a sweep runs each trial in one process (trainer.devices {devices}, trainer.strategy "
                    f"{strategy}): run trials side by side with --workers instead"
                )
        _check_run(
            [*space.flags(first), "--trainer.fast_dev_run", "true", "--trainer.default_root_dir", scratch],
            default_config,
            log,
            [Probe()],
        )
    if space.metric not in seen:
        logged = ", ".join(sorted(seen)) or "nothing"
        fail(f"`metric` {space.metric!r} is not logged at validation by this run; it logs: {logged}")


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


def _check_run(args: list[str], default_config: Path | None, log: Path, callbacks: list[L.Callback]) -> Any:
    """Run ``train.py`` with ``args`` in this process, its output in ``log``; fail with its error line, if any.
    Returns what it printed, as YAML (the config, for ``--print_config``)."""
    log.write_text("")
    try:
        with output_to(log):
            cli_main(args, default_config, callbacks)
    except SystemExit as stop:
        if stop.code not in (0, None):
            fail(f"the search space's run fails: {_last_error(log)}")
    except Exception as error:  # the model's or the data's own error, at the first step
        fail(f"the search space's run fails: {type(error).__name__}: {' '.join(str(error).split())}")
    with contextlib.suppress(yaml.YAMLError):
        return yaml.safe_load(log.read_text())
    return None


def sweep(
    space_path: Path,
    default_config: Path | None = None,
    storage: str | None = None,
    workers: int = 1,
    trials: int | None = None,
    logs: Path = Path("lightning_logs"),
    grace_period: float = GRACE_S,
    name: str | None = None,
) -> Any:
    """Run (or go on with) the sweep ``space_path`` describes; print each trial and the best. Returns the study.

    ``trials`` and ``name`` replace the space file's. Bad input (the space, ``storage``, ``workers``, ``trials``)
    ends with one line and exit status 2, before a study or a run is created.
    """
    try:
        import optuna
    except ImportError:
        fail('sweeps need Optuna, which is not installed: pip install -e ".[sweep]"')
    try:
        space = SearchSpace.load(space_path)
        if trials is not None:
            if trials < 1:
                raise ValueError(f"Expected `--trials` to be a positive integer, got {trials}")
            space = SearchSpace(**{**space.__dict__, "trials": trials})
        if name is not None:
            if not name.strip():
                raise ValueError("Expected `--name` to be a study name, got an empty one")
            space = SearchSpace(**{**space.__dict__, "name": name})
        if workers < 1:
            raise ValueError(f"Expected `--workers` to be a positive integer, got {workers}")
        if not grace_period >= 2 * HEARTBEAT_S:
            raise ValueError(f"Expected `--grace_period` to be at least {2 * HEARTBEAT_S} s, got {grace_period}")
    except ValueError as error:
        fail(str(error))
    check(space, default_config)
    url = storage_url(space, storage, logs)
    try:
        rdb = open_storage(url, grace_period)
    except ValueError as error:
        fail(str(error))
    folder = (logs / "sweeps" / space.name).resolve()
    study = _open_study(space, rdb, folder)
    setup = Setup(space, url, folder, default_config, shared=storage is not None, grace_s=grace_period)
    before = counts(study.get_trials(deepcopy=False))
    done = sum(before[s] for s in FINISHED)
    shown = without_password(url)
    print(f"Study {space.name!r} in {shown}: {done} of {space.trials} trials finished; {workers} worker(s).")
    print(f"Trials' run folders: {folder / 'lightning_logs'}/trial_<n>  (tensorboard --logdir {folder})", flush=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)  # the cores this process may use (a SLURM allocation, a cgroup), shared
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # at most the threads set for torch (a test, a scheduler)
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    interrupted, stopped = False, None
    try:
        if workers == 1:
            work(setup, 0, threads)
        else:
            _in_processes(setup, workers, threads)
    except KeyboardInterrupt:
        interrupted = True
    except TrialFailed as error:
        stopped = str(error)
    _report(space, optuna.load_study(study_name=space.name, storage=rdb))
    if interrupted:
        print("Interrupted: the same command goes on with this study.", file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED)
    if stopped:
        print(f"error: stopped: {stopped}", file=sys.stderr, flush=True)
        raise SystemExit(1)
    return study


def _open_study(space: SearchSpace, storage: Any, folder: Path) -> Any:
    """The study, created or loaded; refused (one line) where the space file changed since the study began, or
    where a new study would write its trials' run folders over another one's."""
    import optuna

    described = {"metric": space.metric, "direction": space.direction, "args": list(space.args),
                 "params": [p.__dict__ | {"choices": list(p.choices)} for p in space.params]}  # fmt: skip
    names = optuna.study.get_all_study_names(storage)
    if space.name not in names and any((folder / "lightning_logs").glob("trial_*")):
        fail(f"{folder} holds the trials of another study named {space.name!r}: give the space another `name`")
    study = optuna.create_study(study_name=space.name, storage=storage, direction=space.direction, load_if_exists=True)
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", described)
    elif yaml.safe_dump(recorded) != yaml.safe_dump(described):
        fail(
            f"the study {space.name!r} was begun with another search space (metric, direction, args or params): "
            "give this one another `name`, or put the file back as it was"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return study


def _in_processes(setup: Setup, workers: int, threads: int) -> None:
    """Run ``workers`` worker processes; SIGINT/SIGTERM here stops each of them cleanly (its trial failed).

    On a machine with several GPUs, each worker sees one (``CUDA_VISIBLE_DEVICES``), unless that is already set.
    """
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no state shared with this one
    gpus = torch.cuda.device_count() if "CUDA_VISIBLE_DEVICES" not in os.environ else 0
    processes = []
    for i in range(workers):
        process = context.Process(target=_worker_process, args=(setup, i, threads, os.getpid()))
        with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus > 1 else {}):
            process.start()  # the child takes the environment as it is now
        processes.append(process)

    def stop(signum: int, frame: Any) -> None:
        # SIGINT or SIGTERM sent to this process alone (kill, a scheduler): each worker gets SIGTERM, which stops
        # its trial as cleanly as Ctrl-C does. (Not SIGINT: after a Ctrl-C at the terminal, which reaches the
        # workers too, a second SIGINT would stop them at once, without waiting for their step to end.)
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join()
        raise
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if any(p.exitcode == INTERRUPTED for p in processes):
        raise KeyboardInterrupt
    if any(p.exitcode == STOPPED for p in processes):
        raise TrialFailed(f"too many trials failed; see their logs in {setup.folder}")
    if crashed := [p.exitcode for p in processes if p.exitcode]:
        raise RuntimeError(f"{len(crashed)} worker(s) stopped with an error (exit status {crashed[0]}): see above")


def _worker_process(setup: Setup, worker: int, threads: int, parent: int) -> None:
    """A worker in its own process: on SIGINT/SIGTERM (its trial already marked failed), exit without a traceback."""

    # SIGTERM from the sweep: during a trial's training RunGuard stops it at a step end (the trial fails, the worker
    # stops); outside of training it is noted here, and the worker stops before its next trial. Never in between
    # (a trial just created, not yet running its function), where Optuna would leave the trial running.
    requested: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requested.append(signum))
    try:
        work(setup, worker, threads, parent, stopping=lambda: bool(requested))
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except TrialFailed as error:
        print(f"error: stopped: {error}", file=sys.stderr, flush=True)
        sys.exit(STOPPED)


def _report(space: SearchSpace, study: Any) -> None:
    trials = study.get_trials(deepcopy=False)
    states = counts([t for t in trials if BEYOND_PLAN not in t.user_attrs])
    parts = [f"{n} {state.lower()}" for state, n in sorted(states.items())]
    if not_run := len(trials) - states.total():
        parts.append(f"{not_run} not run (beyond the plan)")
    print(f"Trials: {', '.join(parts)}.")
    if not states["COMPLETE"]:
        print("No trial completed yet.")
        return
    best = study.best_trial
    print(f"Best: trial {best.number}, {space.metric} {best.value:.6g}, {best.params}")
    print(f"Run it again (from the folder the sweep ran in): {best.user_attrs.get('command', '')}", flush=True)
