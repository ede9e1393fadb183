"""The study: its storage, the workers that start trials until it has its planned number, and the summary.

:func:`sweep` is the whole of ``scripts/sweep.py``: it checks the space (:func:`~litpoly.sweep.trial.check`),
opens or creates the study in its database, runs the workers (in this process, or each in a process of its own),
and prints the best trial. Bad input raises a :class:`~litpoly.errors.SettingError` before a study or a run is
created; Ctrl-C or SIGTERM ends it with :class:`~litpoly.errors.Interrupted`, the study kept for the same command.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import yaml

from litpoly.console import without_password
from litpoly.errors import Interrupted, RunError, SettingError
from litpoly.sweep.space import SearchSpace
from litpoly.sweep.storage import GRACE_S, HEARTBEAT_S, StorageLost, open_storage, storage_lost, storage_url
from litpoly.sweep.trial import TrialFailed, check, run_trial

FINISHED = ("COMPLETE", "PRUNED")
#: The user attribute of a trial given up before it ran, beyond the planned number (see ``work``).
BEYOND_PLAN = "beyond_plan"
#: How a worker process ended, as it tells the sweep: SIGINT or SIGTERM stopped it, or too many of its trials failed.
INTERRUPTED, STOPPED, LOST = 130, 3, 4


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


def counts(trials: list[Any]) -> Counter[str]:
    """Trials by state name (``COMPLETE``, ``PRUNED``, ``FAIL``, ``RUNNING``, ``WAITING``)."""
    return Counter(trial.state.name for trial in trials)


def _load_study(setup: Setup, worker: int) -> tuple[Any, Any]:
    """The study, as this worker samples it (its own stream of settings, the space's pruner), and its storage."""
    import optuna

    space = setup.space
    storage = open_storage(setup.url, setup.grace_s)
    started = len(optuna.load_study(study_name=space.name, storage=storage).get_trials(deepcopy=False))
    # The space's seed for the first worker of a new sweep; a stream of settings of its own for every other worker
    # and restart (a resumed sweep does not draw its first settings again), and for every machine and process when
    # the study is shared (workers started at the same moment elsewhere).
    seed = space.seed + 1000 * worker + started
    if setup.shared:
        seed += zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode())
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = (
        optuna.pruners.MedianPruner(**dataclasses.asdict(space.pruner))
        if space.pruner is not None
        else optuna.pruners.NopPruner()
    )
    return optuna.load_study(study_name=space.name, storage=storage, sampler=sampler, pruner=pruner), storage


def _beat_once_for_new_running_trials(study: Any, storage: Any, trials: list[Any], seen: set[int]) -> None:
    """Record one heartbeat for each running trial this worker has not seen running before.

    Why: Optuna fails a running trial as stale when its last heartbeat is older than the grace period, but a trial
    whose process or database died between the trial's creation and its first heartbeat has none at all: it would
    count as running for ever, and every later command would wait for it. One heartbeat recorded here makes it
    stale a grace period later; a trial that is alive records its own anyway. Called after ``fail_stale_trials``,
    so a trial whose heartbeats have already stopped long enough is failed first, not renewed.
    """
    new = [trial.number for trial in trials if trial.state.name == "RUNNING" and trial.number not in seen]
    if new:
        study_id = storage.get_study_id_from_name(study.study_name)
        for number in new:
            storage.record_heartbeat(storage.get_trial_id_from_study_id_trial_number(study_id, number))
        seen.update(new)


def work(
    setup: Setup, worker: int, threads: int, parent: int | None = None, stopping: Callable[[], bool] = lambda: False
) -> None:
    """One worker: start trials until the study has its planned number finished (or running elsewhere).

    ``parent``: the sweep's process, for a worker in a process of its own: it stops when the sweep is gone.
    ``stopping``: asked before each trial; true, the worker stops (raising ``KeyboardInterrupt``).

    Raises:
        TrialFailed: So many trials failed on their own that the space looks hopeless.
        StorageLost: The study's database stopped answering.
    """
    try:
        _work(setup, worker, threads, parent, stopping)
    except Exception as error:
        if storage_lost(error):
            raise StorageLost(setup.url, error) from None
        raise


def _work(setup: Setup, worker: int, threads: int, parent: int | None, stopping: Callable[[], bool]) -> None:
    import optuna

    space = setup.space
    torch.set_num_threads(threads)
    study, storage = _load_study(setup, worker)
    stopped: list[bool] = []  # a signal came after a trial's run had finished: the worker stops after that trial
    seen_running: set[int] = set()  # numbers of the trials seen running (each given one heartbeat)

    def objective(trial: Any) -> float:
        # Optuna numbers trials in the order they start, and has no "create a trial unless there are n": when two
        # workers count at the same moment, the later trial is beyond the plan. It is given up before it draws
        # its settings (recorded as failed, marked as never run), so the study ends with exactly the planned number.
        ahead = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and t.state.name != "FAIL"]
        if len(ahead) >= space.trials:
            trial.set_user_attr(BEYOND_PLAN, True)
            raise TrialFailed("not run: the study already had its planned number of trials")
        return run_trial(trial, space, setup.folder, setup.default_config, stop_after=lambda: stopped.append(True))

    while parent is None or os.getppid() == parent:
        if stopping():
            raise KeyboardInterrupt
        optuna.storages.fail_stale_trials(study)  # a trial whose process died: failed, its settings queued again
        trials = study.get_trials(deepcopy=False)
        _beat_once_for_new_running_trials(study, storage, trials, seen_running)
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
        if stopped:
            raise KeyboardInterrupt


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

    ``trials`` and ``name`` replace the space file's.

    Raises:
        SettingError: Bad input (the space, ``storage``, ``workers``, ``trials``, …), before a study or a run is
            created.
        Interrupted: Ctrl-C or SIGTERM stopped the sweep (its trials kept: the same command goes on).
        RunError: The sweep stopped because too many trials failed, or a worker process crashed; a
            ``StorageLost`` when the study's database stopped answering (no summary then: it cannot be read).
    """
    try:
        import optuna
    except ImportError:
        raise SettingError('sweeps need Optuna, which is not installed: pip install -e ".[sweep]"') from None
    space = _space(space_path, workers, trials, grace_period, name)
    check(space, default_config)
    url = storage_url(space, storage, logs)
    rdb = open_storage(url, grace_period)
    folder = (logs / "sweeps" / space.name).resolve()
    study = _open_study(space, rdb, folder)
    setup = Setup(space, url, folder, default_config, shared=storage is not None, grace_s=grace_period)
    before = counts(study.get_trials(deepcopy=False))
    done = sum(before[s] for s in FINISHED)
    print(f"Study {space.name!r} in {without_password(url)}: {done} of {space.trials} trials finished; {workers} "
          f"worker(s).\nTrials' run folders: {folder / 'lightning_logs'}/trial_<n>  (tensorboard --logdir {folder})",
          flush=True)  # fmt: skip
    interrupted, stopped = False, None
    try:
        if workers == 1:
            work(setup, 0, _threads(workers))
        else:
            _in_processes(setup, workers, _threads(workers))
    except KeyboardInterrupt:
        interrupted = True
    except TrialFailed as error:
        stopped = str(error)
    _report(space, optuna.load_study(study_name=space.name, storage=rdb))
    if interrupted:
        raise Interrupted("Interrupted: the same command goes on with this study.", signum=signal.SIGINT)
    if stopped:
        raise RunError(f"stopped: {stopped}")
    return study


def _space(path: Path, workers: int, trials: int | None, grace_period: float, name: str | None) -> SearchSpace:
    """The space file, with the command line's ``--trials`` and ``--name`` instead of its own; the flags checked.

    Raises:
        SettingError: One line naming the file's key or the flag.
    """
    space = SearchSpace.load(path)
    if trials is not None:
        if trials < 1:
            raise SettingError(f"Expected `--trials` to be a positive integer, got {trials}")
        space = dataclasses.replace(space, trials=trials)
    if name is not None:
        try:
            space = dataclasses.replace(space, name=name)
        except ValueError as error:  # the file's rule for its `name`, said of the flag
            raise SettingError(str(error).replace("`name`", "`--name`", 1)) from None
    if workers < 1:
        raise SettingError(f"Expected `--workers` to be a positive integer, got {workers}")
    if not grace_period >= 2 * HEARTBEAT_S:
        raise SettingError(f"Expected `--grace_period` to be at least {2 * HEARTBEAT_S} s, got {grace_period}")
    return space


def _threads(workers: int) -> int:
    """Torch's threads for each worker: this process's cores (a SLURM allocation, a cgroup) shared among them, and
    at most ``OMP_NUM_THREADS`` where it is set (a test, a scheduler)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // workers)
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = max(1, min(threads, int(os.environ["OMP_NUM_THREADS"])))
    return threads


def _open_study(space: SearchSpace, storage: Any, folder: Path) -> Any:
    """The study, created or loaded.

    Raises:
        SettingError: The space file changed since the study began, or a new study would write its trials' run
            folders over another one's.
    """
    import optuna

    names = optuna.study.get_all_study_names(storage)
    if space.name not in names and any((folder / "lightning_logs").glob("trial_*")):
        raise SettingError(f"{folder} holds the trials of another study named {space.name!r}: give the space another "
                           "`name`")  # fmt: skip
    study = optuna.create_study(study_name=space.name, storage=storage, direction=space.direction, load_if_exists=True)
    recorded, described = study.user_attrs.get("space"), space.described()
    if recorded is None:
        study.set_user_attr("space", described)
    elif yaml.safe_dump(recorded) != yaml.safe_dump(described):
        raise SettingError(
            f"the study {space.name!r} was begun with another search space (metric, direction, args or params): "
            "give this one another `name`, or put the file back as it was"
        )
    folder.mkdir(parents=True, exist_ok=True)
    return study


def _in_processes(setup: Setup, workers: int, threads: int) -> None:
    """Run ``workers`` worker processes; SIGINT/SIGTERM here stops each of them cleanly (its trial failed).

    On a machine with several GPUs, each worker sees one (``CUDA_VISIBLE_DEVICES``), unless that is already set.

    Raises:
        KeyboardInterrupt: A signal stopped the workers.
        TrialFailed: A worker stopped because too many trials failed.
        RunError: A worker process crashed.
    """
    context = multiprocessing.get_context("spawn")  # a fresh interpreter each: no state shared with this one
    gpus = torch.cuda.device_count() if "CUDA_VISIBLE_DEVICES" not in os.environ else 0
    processes, ends = [], []
    for i in range(workers):
        ended = context.Value("i", 0)  # how the worker ended, as it says (see _worker_process)
        process = context.Process(target=_worker_process, args=(setup, i, threads, os.getpid(), ended))
        with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus > 1 else {}):
            process.start()  # the child takes the environment as it is now
        processes.append(process)
        ends.append(ended)

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
    if any(ended.value == INTERRUPTED for ended in ends):
        raise KeyboardInterrupt
    if any(ended.value == LOST for ended in ends):
        raise StorageLost(setup.url, ConnectionError("see the workers' lines above"))
    if any(ended.value == STOPPED for ended in ends):
        raise TrialFailed(f"too many trials failed; see their logs in {setup.folder}")
    if crashed := [p.exitcode for p in processes if p.exitcode]:
        raise RunError(f"{len(crashed)} worker(s) stopped with an error (exit status {crashed[0]}): see above")


def _worker_process(setup: Setup, worker: int, threads: int, parent: int, ended: Any) -> None:
    """A worker in its own process; how it ended (``INTERRUPTED``, ``STOPPED``) goes into ``ended`` for the sweep."""

    # SIGTERM from the sweep: during a trial's training RunGuard stops it at a step end (the trial fails, the worker
    # stops); outside of training it is noted here, and the worker stops before its next trial. Never in between
    # (a trial just created, not yet running its function), where Optuna would leave the trial running.
    requested: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: requested.append(signum))
    try:
        work(setup, worker, threads, parent, stopping=lambda: bool(requested))
    except KeyboardInterrupt:
        ended.value = INTERRUPTED
    except TrialFailed:
        ended.value = STOPPED
    except StorageLost as lost:  # said once, by the sweep, not as a traceback from every worker
        ended.value = LOST
        print(f"worker {worker}: {lost.line}", file=sys.stderr, flush=True)


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
