"""The run folder: what a run's folder is called, which earlier run ``--ckpt_path last`` and ``best`` mean, and how a
checkpoint is read. Every rule about run folders lives here.

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

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import jsonargparse.typing
import torch
import yaml
from lightning.fabric.plugins.environments.slurm import SLURMEnvironment
from lightning.pytorch.loggers import TensorBoardLogger

from litpoly.errors import CheckpointError

#: The folder under the root that holds the run folders (Lightning's loggers' default ``name``).
LOGS = "lightning_logs"

#: Names the next run's folder instead of the next free ``version_N`` (a sweep sets it to ``trial_<n>``).
RUN_VERSION = "LITPOLY_RUN_VERSION"

#: jsonargparse's typed numbers (``lr: PositiveFloat`` in a model's ``__init__``, as the README recommends) are float
#: and int subclasses: passed on as they are, to an optimizer say, they are pickled into the checkpoint by class.
#: They hold a number and no code, so weights-only reads — ours and Lightning's — may load them.
SAFE_TYPES = (
    jsonargparse.typing.PositiveFloat,
    jsonargparse.typing.PositiveInt,
    jsonargparse.typing.NonNegativeFloat,
    jsonargparse.typing.NonNegativeInt,
    jsonargparse.typing.ClosedUnitInterval,
    jsonargparse.typing.OpenUnitInterval,
)
torch.serialization.add_safe_globals(list(SAFE_TYPES))


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
    """The folder the next run of ``root`` gets: ``lightning_logs/<name>`` (see the module's docstring)."""
    return Path(root, LOGS, run_name() or f"version_{next_version(root)}")


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
        config = yaml.safe_load((run / "config.yaml").read_text())
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
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_checkpoint(ckpt_path: str, logs: Path, of: str | None = None) -> Path:
    """The file ``--ckpt_path`` means: a path as given, or for ``last`` (``best``) the newest ``last.ckpt``
    (``best.ckpt``) of a run of the experiment ``of`` under ``logs`` (of any run when ``of`` is ``None``).

    Lightning's own ``last`` and ``best`` look only in the *new* run's folder, which is empty when a new command
    resumes or evaluates an old run.

    Raises:
        CheckpointError: One line naming the setting, when there is no such file.
    """
    if ckpt_path in ("last", "best"):
        which: Literal["last", "best"] = "last" if ckpt_path == "last" else "best"
        candidates = run_checkpoints(logs, which, of)
        if not candidates:
            raise CheckpointError(_none_found(which, logs, of))
        return candidates[0]
    if ckpt_path in ("hpc", "registry"):
        raise CheckpointError(
            f"`ckpt_path` {ckpt_path!r} is not supported here: give a checkpoint file, 'last' or 'best'"
        )
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"`ckpt_path`: no such checkpoint file: {ckpt_path}")
    return path


def _none_found(which: Literal["last", "best"], logs: Path, of: str | None) -> str:
    if of is not None and (others := len(run_checkpoints(logs, which))):
        return (
            f"`ckpt_path` {which}: no run under {logs} with this command's model and data settings has a "
            f"checkpoints/{which}.ckpt ({others} with other settings do: give the settings they were trained with, "
            "or the checkpoint's path)"
        )
    hint = " (a run keeps one when --best.monitor names a metric)" if which == "best" else ""
    return f"`ckpt_path` {which}: no run under {logs} has a checkpoints/{which}.ckpt{hint}"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a Lightning checkpoint from ``path``, weights only (tensors and plain data, never code).

    Raises:
        CheckpointError: One line, when the file holds objects that may not be loaded (code), is truncated, corrupt
            or not a Lightning checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))  # torch names the first object it would not load
        if refused is not None:
            raise CheckpointError(
                f"`ckpt_path` {path} holds objects that are not allowed to load ({refused.group(1)}): checkpoints "
                "are read weights-only, so no code they carry ever runs"
            ) from None
        # A truncated zip, pickle garbage, another format: all mean "unreadable".
        raise CheckpointError(
            f"`ckpt_path` {path} is not a readable checkpoint (truncated or corrupt?): {type(error).__name__}"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"`ckpt_path` {path} is not a Lightning checkpoint (it has no state_dict)")
    return checkpoint
