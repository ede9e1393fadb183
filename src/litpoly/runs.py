"""The run folder: what a run's folder is called, which earlier run ``--ckpt_path last`` and ``best`` mean, and what
a run folder holds. Every rule about run folders lives here; how a checkpoint file is read, in
:mod:`litpoly.checkpoint_file`.

A run's files go to ``<root>/lightning_logs/<name>/`` (``root``: ``--trainer.default_root_dir``, or the working
folder): ``config.yaml``, ``hparams.yaml``, TensorBoard's event file, ``checkpoints/``. The ``name`` is

- ``$LITPOLY_RUN_VERSION`` when set (a sweep names its trials ``trial_<n>``, so that parallel workers in one folder
  never pick the same number);
- else SLURM's job id (``$SLURM_JOB_ID``, as Lightning's ``SLURMEnvironment`` reads it): a requeued job finds its
  own folder again;
- else ``version_N``, the next free number, as Lightning's loggers count.

``last`` and ``best`` mean the newest such checkpoint of a run **of the same experiment**: a run whose recorded
``config.yaml`` has the command's own ``model`` and ``data`` settings (class and arguments). So two configs sharing
``lightning_logs/`` (SGD and RMSprop runs of one model, or two models) never resume or evaluate each other's runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from lightning.fabric.plugins.environments.slurm import SLURMEnvironment
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from litpoly import safe_yaml
from litpoly.checkpoint_file import UnreadableCheckpoint, read_checkpoint
from litpoly.console import say
from litpoly.errors import CheckpointError

#: The folder under the root that holds the run folders (Lightning's loggers' default ``name``).
LOGS = "lightning_logs"

#: Names the next run's folder instead of the next free ``version_N`` (a sweep sets it to ``trial_<n>``).
RUN_VERSION = "LITPOLY_RUN_VERSION"


def root_dir(trainer_config: Any) -> str:
    """Where the run's ``lightning_logs/`` goes: ``--trainer.default_root_dir``, or the working folder."""
    root = str(trainer_config.get("default_root_dir") or os.getcwd())
    if "://" not in root:  # a local path: `~` expanded, as the Trainer does for its own default_root_dir
        root = os.path.normpath(os.path.expanduser(root))
    return root


def run_name() -> str | None:
    """The run folder's name the environment asks for (``$LITPOLY_RUN_VERSION``, or SLURM's job id), if any."""
    name = os.environ.get(RUN_VERSION) or SLURMEnvironment.job_id()
    return None if name is None else str(name)


def next_version(root: str | Path, name: str = LOGS) -> int:
    """The ``N`` of the next ``<root>/<name>/version_N``, as Lightning's loggers number their runs."""
    return int(TensorBoardLogger(root, name=name).version)


def next_run_folder(root: str | Path) -> Path:
    """The folder the next run of ``root`` gets: ``lightning_logs/<name>`` (see the module's docstring), claimed."""
    return Path(root, LOGS, run_name() or f"version_{claim_version(root)}")


_claimed: list[Path] = []  # the folders claim_version made for the command under way


def claim_version(root: str | Path, name: str = LOGS) -> int:
    """The ``N`` of the next free ``<root>/<name>/version_N``, its folder made here and now, so that runs started at
    the same moment never share one: of two that count the same ``N``, the second finds the folder made and counts
    again. (Lightning's loggers count when they first write, seconds later, and make the folder if it is there.)

    Only the first process of a run claims (``rank_zero_only.rank``, read by Lightning from the environment a
    launcher sets: DDP's other processes, torchrun, SLURM): the others write no run folder, and a claim of theirs
    would stay behind empty when the launcher ends them."""
    if getattr(rank_zero_only, "rank", 0) != 0:
        return next_version(root, name)
    while True:
        version = next_version(root, name)
        folder = Path(root, name, f"version_{version}")
        made = [folder, *(parent for parent in folder.parents if not parent.exists())]
        try:
            folder.mkdir(parents=True)  # one call: the parents too, if another run has not made them meanwhile
        except FileExistsError:
            continue
        _claimed.extend(made)
        return version


def release_claims() -> None:
    """Remove the folders :func:`claim_version` made that stayed empty (``lightning_logs/`` too, where it made that):
    the command was refused before its run wrote anything, or wrote nothing (``fast_dev_run``)."""
    for folder in sorted(_claimed, key=lambda path: len(path.parts), reverse=True):  # a folder before its parent
        with contextlib.suppress(OSError):  # not empty: the run's (or another run's)
            folder.rmdir()
    _claimed.clear()


# -- which run `last` and `best` mean -------------------------------------------------------------------------


def experiment(config: Mapping[str, Any]) -> str:
    """What makes two runs one experiment: their ``model`` and ``data`` settings, as comparable text.

    ``config`` is a run's config as a mapping (its ``config.yaml``, or the command's parsed config as a dict).
    Numbers compare by value (jsonargparse's typed numbers are floats and ints), paths by their text.

    Example:
        >>> a = {"model": {"class_path": "m.M", "init_args": {"lr": 1e-3}}, "trainer": {"max_steps": 5}}
        >>> b = {"model": {"class_path": "m.M", "init_args": {"lr": 0.001}}, "trainer": {"max_steps": 9}}
        >>> experiment(a) == experiment(b), experiment(a) == experiment({"model": {"class_path": "m.Other"}})
        (True, False)
    """
    return json.dumps({key: _plain(config.get(key)) for key in ("model", "data")}, sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    """``value`` without jsonargparse's empty ``dict_kwargs`` (present in a parsed config, left out of a saved one)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if not (k == "dict_kwargs" and not v)}
    return value


def _recorded_experiment(run: Path) -> str | None:
    try:
        config = safe_yaml.load((run / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return experiment(config) if isinstance(config, dict) else None


def run_checkpoints(logs: Path, which: Literal["last", "best"], of: str | None = None) -> list[Path]:
    """The ``checkpoints/<which>.ckpt`` of every run under ``logs``, whatever its folder's name; only those of the
    experiment ``of`` (see :func:`experiment`) when given. Newest first."""
    found = [
        path
        for path in logs.glob(f"*/checkpoints/{which}.ckpt")
        if of is None or _recorded_experiment(path.parents[1]) == of
    ]
    return sorted(found, key=lambda path: (_mtime(path), _natural(path.parents[1].name)), reverse=True)


def resume_candidates(logs: Path, of: str | None = None) -> list[Path]:
    """Every checkpoint ``--ckpt_path last`` may mean, in the order it tries them: the runs of the experiment ``of``
    newest first (by their newest checkpoint), and within a run its ``last.ckpt``, then its other checkpoints
    (periodic ones, ``best.ckpt``) newest first. A run stopped before its first ``last.ckpt`` still counts, with
    what it did save."""
    runs: dict[Path, list[Path]] = {}
    for path in logs.glob("*/checkpoints/*.ckpt"):
        runs.setdefault(path.parents[1], []).append(path)
    ordered = [_in_resume_order(paths) for run, paths in runs.items() if of is None or _recorded_experiment(run) == of]
    ordered.sort(key=lambda paths: (max(map(_mtime, paths)), _natural(paths[0].parents[1].name)), reverse=True)
    return [path for paths in ordered for path in paths]


def _in_resume_order(checkpoints: list[Path]) -> list[Path]:
    """One run's checkpoints as ``last`` tries them: its ``last.ckpt``, then the others newest first."""
    return sorted(checkpoints, key=lambda p: (p.name == "last.ckpt", _mtime(p), _natural(p.name)), reverse=True)


def _mtime(path: Path) -> int:
    """When ``path`` was last written, in nanoseconds (file systems that keep them tell apart saves a moment apart).
    Equal times (a copy that kept them, a coarse file system) are told apart by :func:`_natural` name order."""
    try:
        return path.stat().st_mtime_ns
    except OSError:  # removed since it was listed
        return -1


def _natural(name: str) -> list[tuple[int, str]]:
    """``name`` in the order its numbers count: ``version_10`` after ``version_9``, ``step=200`` after ``step=100``
    (the later run, the later save), whatever the numbers' widths.

    Example:
        >>> sorted(["version_10", "version_9", "trial_2"], key=_natural)
        ['trial_2', 'version_9', 'version_10']
    """
    return [(int(part), "") if part.isdigit() else (-1, part) for part in re.split(r"(\d+)", name)]


def find_checkpoint(ckpt_path: str, logs: Path, of: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The checkpoint ``--ckpt_path`` means, read (weights only): a path as given, or for ``last`` the newest
    checkpoint of a run of the experiment ``of`` under ``logs`` (see :func:`resume_candidates`), for ``best`` the
    newest ``best.ckpt`` (of any run when ``of`` is ``None``).

    Lightning's own ``last`` and ``best`` look only in the *new* run's folder, which is empty when a new command
    resumes or evaluates an old run. A newest checkpoint that is unreadable (a disk that filled, a copy cut short)
    is passed over, with one line saying so, for the newest one that reads: otherwise every relaunch of a
    preemptible job would stop at it. One that holds code is never passed over: that is an error.

    Raises:
        CheckpointError: One line naming the setting, when there is no such file, or none that reads.
    """
    if ckpt_path in ("hpc", "registry"):
        raise CheckpointError(
            f"`ckpt_path` {ckpt_path!r} is not supported here: give a checkpoint file, 'last' or 'best'"
        )
    if ckpt_path not in ("last", "best"):
        path = Path(ckpt_path)
        if not path.is_file():
            raise CheckpointError(f"`ckpt_path`: no such checkpoint file: {ckpt_path}")
        return path, read_checkpoint(path)
    candidates = resume_candidates(logs, of) if ckpt_path == "last" else run_checkpoints(logs, "best", of)
    if not candidates:
        raise CheckpointError(_none_found("last" if ckpt_path == "last" else "best", logs, of))
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except UnreadableCheckpoint as error:
            say(f"Warning: passing over {path}: {error.reason}.", stderr=True)
    raise CheckpointError(f"`ckpt_path` {ckpt_path}: none of the {len(candidates)} checkpoints found reads")


def _none_found(which: Literal["last", "best"], logs: Path, of: str | None) -> str:
    if of is not None and (others := len(run_checkpoints(logs, which))):
        return (
            f"`ckpt_path` {which}: no run under {logs} with this command's model and data settings has a "
            f"checkpoints/{which}.ckpt ({others} with other settings do: give the settings they were trained with, "
            "or the checkpoint's path)"
        )
    hint = " (a run keeps one when --best.monitor names a metric)" if which == "best" else ""
    return f"`ckpt_path` {which}: no run under {logs} has a checkpoints/{which}.ckpt{hint}"


# -- what a run folder holds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """What a checkpoint already completed of a command's schedule (:func:`training_done`)."""

    what: str  #: e.g. ``max_steps=2400``
    hint: str  #: the setting that would train on

    def __str__(self) -> str:
        return self.what


def training_done(config: Any, checkpoint: dict[str, Any]) -> Done | None:
    """What a checkpoint already completed of the schedule a command's settings set, or ``None`` when resuming it
    would train more. ``config``: the command's settings (a parsed config, or a ``config.yaml``): its ``trainer``
    (``max_steps``, ``max_epochs``, ``max_time``) and ``early_stopping``.

    Lightning stops at ``max_steps`` optimizer steps, after ``max_epochs`` epochs (1000 when neither is set), once
    ``max_time`` has passed in training (its ``Timer``), or when early stopping says so; the checkpoint records its
    steps (``global_step``), its finished epochs (its fit loop's progress) and those callbacks' states. Resumed, such
    a run would train one more step or validation interval and stop again.
    """
    trainer = config.get("trainer") or {}
    max_steps = trainer.get("max_steps")
    if max_steps is not None and max_steps >= 0 and checkpoint.get("global_step", 0) >= max_steps:
        return Done(f"max_steps={max_steps}", "raise --trainer.max_steps to train on")
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None and (max_steps is None or max_steps < 0):
        max_epochs = 1000
    epochs = (
        checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("completed")
    )
    if max_epochs is not None and max_epochs >= 0 and isinstance(epochs, int) and epochs >= max_epochs:
        return Done(f"max_epochs={max_epochs}", "raise --trainer.max_epochs to train on")
    states = [s for s in (checkpoint.get("callbacks") or {}).values() if isinstance(s, dict)]
    if (max_time := trainer.get("max_time")) is not None:
        timer = Timer(duration=max_time)
        for state in (s for s in states if isinstance(s.get("time_elapsed"), dict)):
            timer.load_state_dict(state)
            if (remaining := timer.time_remaining()) is not None and remaining <= 0:
                return Done(f"max_time={max_time}", "raise --trainer.max_time to train on")
    if (config.get("early_stopping") or {}).get("patience") is not None:
        for state in (s for s in states if "stopping_reason" in s and "wait_count" in s):  # EarlyStopping's
            if (reason := EarlyStoppingReason(state["stopping_reason"])) is not EarlyStoppingReason.NOT_STOPPED:
                return Done(
                    f"early stopping: {reason.name.lower().replace('_', ' ')}",
                    "leave out --early_stopping.patience to train on",
                )
    return None


@dataclass(frozen=True)
class RunSummary:
    """One run folder at a glance: what ``scripts/runs.py`` lists."""

    folder: Path
    model: str  #: the model's class, as its config names it
    step: int | None  #: the newest checkpoint's step (``None``: no checkpoint)
    best: str | None  #: ``<monitor> <score>`` of its best checkpoint, if it keeps one
    status: str  #: ``done (max_steps=…)``, ``stopped at step N``, or ``no checkpoint``


def summarize_runs(logs: Path) -> list[RunSummary]:
    """Every run folder under ``logs`` (one with a ``config.yaml``), oldest first. Checkpoints are read memory-mapped
    and weights-only: listing a folder of large runs reads little of each file."""
    folders = [config.parent for config in logs.glob("*/config.yaml")]
    return [_summary(folder) for folder in sorted(folders, key=lambda f: (_mtime(f / "config.yaml"), _natural(f.name)))]


def _summary(folder: Path) -> RunSummary:
    try:
        config = safe_yaml.load((folder / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = {}
    config = config if isinstance(config, dict) else {}
    model = config.get("model")
    name = str(model.get("class_path") if isinstance(model, dict) else model)
    checkpoints = _in_resume_order(list((folder / "checkpoints").glob("*.ckpt")))
    for path in checkpoints:
        try:
            checkpoint = read_checkpoint(path, mmap=True)
        except CheckpointError:
            continue
        done = training_done(config, checkpoint)
        step = int(checkpoint.get("global_step", 0))
        status = f"done ({done})" if done else f"stopped at step {step}"
        return RunSummary(folder, name, step, _best(checkpoint), status)
    return RunSummary(folder, name, None, None, "no checkpoint")


def _best(checkpoint: dict[str, Any]) -> str | None:
    """``<monitor> <score>`` of the callback that keeps ``best.ckpt``, from a checkpoint's callback states."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and str(state.get("best_model_path", "")).endswith("best.ckpt"):
            score = state.get("best_model_score")
            if state.get("monitor") and score is not None:
                return f"{state['monitor']} {float(score):.6g}"
    return None
