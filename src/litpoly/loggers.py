"""The run's loggers: TensorBoard flushed cheaply, and the loggers a config lists by class put in the run folder.

:class:`ThrottledTensorBoardLogger` is Lightning's ``TensorBoardLogger``, flushed every ``flush_secs`` seconds
rather than after every logging call. Other loggers come from a config file (``configs/loggers/``: CSV, MLflow,
or both beside TensorBoard): :func:`place_loggers` puts those a config lists by class alone in the run folder,
and MLflow's runs in a SQLite store shared by all runs (:func:`prepare_mlflow_stores` builds it, one process at a
time); :class:`CSVLogger` is Lightning's, its ``save_dir`` optional for that. MLflow is imported only when a run
asks for it. What every run records in its loggers is :class:`~litpoly.callbacks.report.RunReport`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import math
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from jsonargparse import Namespace
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger  # imports no mlflow: its logger does, when made
from lightning.pytorch.utilities import rank_zero_only

from litpoly.console import one_line, say, without_passwords
from litpoly.errors import SettingError
from litpoly.runs import claim_version, run_name


class ThrottledTensorBoardLogger(TensorBoardLogger):
    """Lightning's ``TensorBoardLogger``, flushing its event file at most every ``flush_secs`` seconds.

    A drop-in: the same files, the same tags. Lightning calls the logger's ``save()`` after every
    ``log_metrics`` (every ``log_every_n_steps`` steps and after every validation); for TensorBoard that is a
    flush, which waits for the writer thread to empty its queue — far longer than a small model's step. Here
    ``save()`` flushes only when ``flush_secs`` have passed since the last flush; TensorBoard's writer thread
    also flushes on its own every ``flush_secs``, and ``finalize`` (end of run, also after an exception or an
    interruption) flushes the rest. So nothing is lost, and a live TensorBoard lags the run by at most
    ``flush_secs`` — except that a process killed outright (SIGKILL, out of memory) loses its last
    ``flush_secs`` of events.

    Every other argument is ``TensorBoardLogger``'s; ``default_hp_metric`` is off, as :class:`RunReport`
    fills the HPARAMS tab. The command line uses this logger wherever Lightning would use its default one;
    ``--trainer.logger`` picks another. ``save_dir`` may be left out (the working folder): a config file that
    lists loggers need not name a folder, the command line puts them in the run's (see :func:`place_loggers`).
    """

    def __init__(
        self,
        save_dir: str | Path | None = None,
        flush_secs: float = 2.0,
        default_hp_metric: bool = False,
        **kwargs: Any,
    ) -> None:
        # default_hp_metric is an argument of its own, not a default put in kwargs: from a config file, jsonargparse
        # passes every argument of TensorBoardLogger's signature, with TensorBoardLogger's default (True).
        # flush_secs also goes to the SummaryWriter.
        save_dir = os.getcwd() if save_dir is None else save_dir
        super().__init__(save_dir, flush_secs=flush_secs, default_hp_metric=default_hp_metric, **kwargs)
        self.flush_secs = flush_secs
        self._last_flush = -math.inf

    @rank_zero_only
    def save(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self.flush_secs:
            self._last_flush = now
            super().save()


class ResilientMLFlowLogger(MLFlowLogger):
    """Lightning's ``MLFlowLogger``, for which a lost tracking server never costs training.

    MLflow's client retries a failed request for minutes, with backoff, at every logging call: a server that goes
    away mid-run stalls training call after call, and the exception that finally comes ends the run without its
    last checkpoint. Here each call tries once, within ``timeout`` seconds, and the first that fails turns this
    logger off for the rest of the run, with one line saying so: training goes on, and its run folder (TensorBoard's
    files, the checkpoints) is whole. The MLflow run stays as the server last saw it.

    The command line uses it wherever a config names Lightning's ``MLFlowLogger`` (see :func:`place_loggers`); every
    argument is ``MLFlowLogger``'s.
    """

    def __init__(self, *args: Any, timeout: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout = timeout
        self.lost = False

    def _call(self, method: Any, *args: Any) -> Any:
        if self.lost:
            return None
        try:
            with _one_try(self.timeout):
                return method(*args)
        except Exception as error:  # any failure: the server, the network, the store; training matters more
            self.lost = True
            reason = one_line(error, limit=200)
            say(
                without_passwords(
                    f"Warning: MLflow at {self._tracking_uri} failed ({type(error).__name__}: {reason}); the run goes "
                    "on without it, its run folder and checkpoints intact."
                ),
                stderr=True,
            )
            return None

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        self._call(super().log_hyperparams, params)

    @rank_zero_only
    def log_metrics(self, metrics: Any, step: int | None = None) -> None:
        self._call(super().log_metrics, metrics, step)

    @rank_zero_only
    def finalize(self, status: str = "success") -> None:
        self._call(super().finalize, status)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._call(super().after_save_checkpoint, checkpoint_callback)

    @rank_zero_only
    def log_artifact(self, path: Path) -> None:
        """Upload the file at ``path`` to this run's artifacts."""
        self._call(lambda: self.experiment.log_artifact(self.run_id, str(path)))


# -- loggers named in a config file ---------------------------------------------------------------------------

#: MLflow's store when a run names none: one SQLite database for every run, in the folder that holds the run
#: folders, so that the MLflow UI compares them; their artifacts (each run's config.yaml) beside it.
MLFLOW_STORE = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_MISSING = '`trainer.logger` asks for MLflow, which is not installed: pip install -e ".[mlflow]"'
#: The loggers whose folder is the run folder (as in ``Trainer.log_dir``).
_FOLDERS = (TensorBoardLogger, pl_loggers.CSVLogger)


def _logger_class(entry: Any) -> type | None:
    """The class a ``trainer.logger`` entry names (``None`` for ``True``, ``False`` or an unknown class)."""
    if not isinstance(entry, Namespace) or not isinstance(entry.get("class_path"), str):
        return None
    module, _, name = entry.class_path.rpartition(".")
    with contextlib.suppress(ImportError, AttributeError, ValueError):  # jsonargparse has imported it already
        found = getattr(importlib.import_module(module), name)
        return found if isinstance(found, type) else None
    return None


def _mlflow_arguments(entries: list[Any]) -> list[Namespace]:
    """The ``init_args`` of the MLflow loggers among ``trainer.logger``'s config entries."""
    found = [(entry, _logger_class(entry)) for entry in entries]
    return [entry.init_args for entry, c in found if c and issubclass(c, MLFlowLogger)]


def place_loggers(entries: list[Any], root: str) -> None:
    """Fill in what a config file leaves out of its ``trainer.logger`` list, so that every logger writes where the
    run does; and refuse what cannot work, before anything is made.

    A config names its loggers by class alone (``configs/loggers/*.yaml``). Here, in the parsed config:

    - TensorBoard and CSV loggers without a ``save_dir`` share the first one's run folder: the Trainer's
      ``default_root_dir`` (``root``), its ``name`` and its ``version`` (the next free ``version_N``, or the SLURM
      job's id, as for the default logger). So ``metrics.csv`` lands beside TensorBoard's event file.
    - Lightning's MLFlowLogger is made as a :class:`ResilientMLFlowLogger` (the same arguments).
    - An MLFlowLogger without a ``tracking_uri`` (and no ``MLFLOW_TRACKING_URI``) stores its runs in
      ``lightning_logs/mlflow.db``, a SQLite database shared by all runs, and their artifacts in
      ``lightning_logs/mlartifacts/``; its run is named after the run folder (``version_N``) unless named.

    Raises:
        SettingError: MLflow is asked for but not installed; an MLFlowLogger comes first (the first logger gives the
            run folder, ``trainer.log_dir``, and an MLflow store has none); its tracking server does not answer.
    """
    classes = [_logger_class(entry) for entry in entries]
    mlflow = _mlflow_arguments(entries)
    if mlflow:
        try:
            import mlflow as _  # noqa: F401  # only where asked for: a default run never imports it
        except ImportError:
            raise SettingError(MLFLOW_MISSING) from None
    if classes[:1] and classes[0] and issubclass(classes[0], MLFlowLogger):
        raise SettingError(
            "`trainer.logger`: the first logger gives the run folder, and MLflow's store has none: list "
            "litpoly.loggers.ThrottledTensorBoardLogger or CSVLogger before MLFlowLogger (configs/loggers/mlflow.yaml)"
        )
    folders = [entry.init_args for entry, c in zip(entries, classes, strict=True) if c and issubclass(c, _FOLDERS)]
    folder_name = None
    if folders:
        first = folders[0]
        if first.save_dir is None:
            first.save_dir = root
        if first.version is None and "://" not in str(first.save_dir):
            first.version = run_name() or claim_version(first.save_dir, first.name or "")
        for init_args in folders[1:]:
            if init_args.save_dir is None:
                init_args.save_dir, init_args.name, init_args.version = first.save_dir, first.name, first.version
        if first.version is not None:
            folder_name = first.version if isinstance(first.version, str) else f"version_{first.version}"
    for entry, found in zip(entries, classes, strict=True):
        if found is MLFlowLogger:  # the same arguments; a lost server no longer costs the run
            entry.class_path = f"{__name__}.{ResilientMLFlowLogger.__name__}"
    for init_args in mlflow:
        if init_args.tracking_uri is None and "://" not in root:
            logs = Path(root, "lightning_logs")
            init_args.tracking_uri = f"sqlite:///{logs / MLFLOW_STORE}"
            init_args.artifact_location = init_args.artifact_location or str(logs / MLFLOW_ARTIFACTS)
        init_args.run_name = init_args.run_name or folder_name
        if init_args.tracking_uri is not None and not str(init_args.tracking_uri).startswith("sqlite:"):
            check_tracking_server(init_args.tracking_uri)  # (a SQLite store is made, and checked, before the run)


def prepare_mlflow_stores(entries: list[Any]) -> None:
    """Build each SQLite MLflow store among ``entries`` (``trainer.logger``'s config entries, placed by
    :func:`place_loggers`) and its logger's experiment, unless they are there, one process at a time.

    MLflow's client builds a new SQLite store's tables by running its migrations when first used, and Lightning's
    logger creates its experiment when the store has none. Two processes doing either at once (a sweep's workers
    starting their first trials, or two runs started together) break each other ("duplicate column name", or
    alembic's "expected to match one row"). A lock file per store (empty, in the temporary folder, named after the
    store's path) makes them take turns, on one machine, before the loggers are made; once the store and its
    experiment exist, making a logger only reads them. A tracking server (``http://``) builds its own tables, once;
    there, two runs starting on a new experiment at the same moment may still both try to create it.
    """
    stores = {}
    for init_args in _mlflow_arguments(entries):
        uri = str(init_args.get("tracking_uri") or "")
        if uri.startswith("sqlite:///") and not init_args.get("run_id"):  # an existing run: its store is there
            stores[Path(uri.removeprefix("sqlite:///")).resolve()] = (uri, init_args)
    if not stores:
        return
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    for database, (uri, init_args) in sorted(stores.items()):
        digest = hashlib.sha256(str(database).encode()).hexdigest()[:16]
        with FileLock(Path(tempfile.gettempdir(), f"litpoly-mlflow-{digest}.lock")):
            try:
                client, name = MlflowClient(uri), init_args.experiment_name
                if client.get_experiment_by_name(name) is None:
                    client.create_experiment(name, artifact_location=init_args.get("artifact_location"))
            except Exception as error:  # a folder that cannot be made, a database that is not MLflow's, …
                line = f"MLflow cannot use the tracking store {uri} ({one_line(error)}): give another "
                raise SettingError(without_passwords(line + "`trainer.logger.tracking_uri`")) from None


@contextlib.contextmanager
def _one_try(timeout: int) -> Iterator[None]:
    """MLflow's client, for the calls made inside: one try, within ``timeout`` seconds, instead of its retries."""
    with mock.patch.dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout)):
        yield


def check_tracking_server(uri: str, timeout: int = 10) -> None:
    """Ask the MLflow tracking store at ``uri`` (a server's ``http://``, or another kind MLflow knows) once, within
    ``timeout`` seconds, whether it answers.

    MLflow's client retries a failed request for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, with backoff), which
    is right during a run but would keep a run with a wrong address waiting, then fail it at its first logging call
    with its run folder half-written; and a store it refuses (its file store, say) would fail inside jsonargparse,
    its reason lost in the config it quotes. Here one try, before anything is made.

    Raises:
        SettingError: The store does not answer, or refuses the request, with MLflow's reason.
    """
    from mlflow.tracking import MlflowClient  # imported here: the extra is only needed where asked for

    with _one_try(timeout):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as error:  # any failure (refused, timed out, not MLflow): the run could not log there
            reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
            why = reason.group(1) if reason else one_line(error)
            fix = "give another `trainer.logger.tracking_uri` (or MLFLOW_TRACKING_URI)"
            if uri.startswith(("http://", "https://")):
                line = f"the MLflow tracking server {uri} does not answer ({why}): start it, or {fix}"
            else:
                line = f"MLflow cannot use the tracking store {uri} ({why}): {fix}"
            raise SettingError(without_passwords(line)) from None


class CSVLogger(pl_loggers.CSVLogger):
    """Lightning's ``CSVLogger``, whose ``save_dir`` may be left out (the working folder), as a config file that
    lists loggers need not name a folder: the command line puts ``metrics.csv`` in the run folder, beside
    TensorBoard's event file (see :func:`place_loggers`). Every argument is ``CSVLogger``'s.
    """

    def __init__(
        self,
        save_dir: str | Path | None = None,
        name: str | None = "lightning_logs",
        version: int | str | None = None,
        prefix: str = "",
        flush_logs_every_n_steps: int = 100,
    ) -> None:
        save_dir = os.getcwd() if save_dir is None else save_dir
        super().__init__(save_dir, name, version, prefix, flush_logs_every_n_steps)
