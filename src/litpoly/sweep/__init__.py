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
- **A diverged run ends pruned, with its reason** (the line of the :class:`~litpoly.errors.Diverged` it raises), so
  the sampler learns the region is bad and the sweep goes on; a run that fails otherwise ends failed, with its reason
  (a :class:`~litpoly.errors.RunError`'s line, or the exception and its traceback in the trial's log).
- **Exactly the planned number of finished trials** across any number of workers and restarts: a worker starts
  a trial only while fewer are finished or running than planned (one created beyond the plan, by two workers at
  the same moment, is given up before it runs).
- **Checked before anything is created**: the space file, every flag and value it names (parsed as ``train.py``
  would), one process per trial (no DDP inside a worker), the metric (a ``fast_dev_run`` of the first settings
  must log it, writing nothing) and the storage; each problem is a :class:`~litpoly.errors.SettingError`: one line
  and exit status 2 on the command line.

The package by role: :mod:`~litpoly.sweep.space` (the space file), :mod:`~litpoly.sweep.trial` (one trial, and the
check before a study), :mod:`~litpoly.sweep.storage` (the study's database: opened, or lost mid-sweep),
:mod:`~litpoly.sweep.study` (the study, its workers, the summary).
"""

from litpoly.sweep.space import Param, Pruner, SearchSpace, command
from litpoly.sweep.storage import GRACE_S, HEARTBEAT_S, StorageLost, open_storage, storage_url
from litpoly.sweep.study import BEYOND_PLAN, Setup, sweep, work
from litpoly.sweep.trial import ReportToTrial, TrialFailed, check, run_trial

__all__ = [
    "BEYOND_PLAN",
    "GRACE_S",
    "HEARTBEAT_S",
    "Param",
    "Pruner",
    "ReportToTrial",
    "SearchSpace",
    "Setup",
    "StorageLost",
    "TrialFailed",
    "check",
    "command",
    "open_storage",
    "run_trial",
    "storage_url",
    "sweep",
    "work",
]
