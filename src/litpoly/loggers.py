"""The run's loggers and what every run records in them, whatever the model.

:class:`ThrottledTensorBoardLogger` is Lightning's ``TensorBoardLogger``, flushed every ``flush_secs`` seconds
rather than after every logging call. Other loggers come from a config file (``configs/loggers/``: CSV, MLflow,
or both beside TensorBoard): :func:`place_loggers` puts those a config lists by class alone in the run folder,
and MLflow's runs in a SQLite store shared by all runs; :class:`CSVLogger` is Lightning's, its ``save_dir``
optional for that. MLflow is imported only when a run asks for it.

:class:`RunReport` records, for every ``fit``:

- the hyperparameters (the model's and the data module's ``hparams``, plus seed, precision, devices and the
  schedule) to every logger, and in TensorBoard's HPARAMS tab, where every scalar the run logs is a metric
  column (TensorBoard's own choice when runs declare no fixed list), so runs of different models line up;
- ``config``: the run's resolved ``config.yaml`` as text (MLflow, which has no run folder to hold the file: as an
  artifact, and its settings as params under ``config/``);
- ``train/lr``: each optimizer's learning rate at Lightning's logging cadence (what ``LearningRateMonitor``
  logs, without one more callback).

:class:`BackgroundWriter` moves costly TensorBoard writes off the training thread, and :func:`add_figure`
logs a plot as a small palette PNG.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins.environments.slurm import SLURMEnvironment
from lightning.pytorch import loggers as pl_loggers
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger  # imports no mlflow: its logger does, when made
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

HParamValue = int | float | str | bool


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


# -- loggers named in a config file ---------------------------------------------------------------------------

#: MLflow's store when a run names none: one SQLite database for every run, in the folder that holds the run
#: folders, so that the MLflow UI compares them; their artifacts (each run's config.yaml) beside it.
MLFLOW_STORE = "mlflow.db"
MLFLOW_ARTIFACTS = "mlartifacts"
MLFLOW_MISSING = '`trainer.logger` asks for MLflow, which is not installed: pip install -e ".[mlflow]"'
#: The loggers whose folder is the run folder (as in ``Trainer.log_dir``).
_FOLDERS = (TensorBoardLogger, pl_loggers.CSVLogger)


#: Names the next run's folder instead of the next free ``version_N`` (scripts/sweep.py sets it to ``trial_<n>``,
#: so that parallel trials in one folder never pick the same number). SLURM's job id is used the same way.
RUN_VERSION = "LITPOLY_RUN_VERSION"


def run_version() -> str | int | None:
    """The run folder's name the environment asks for (``$LITPOLY_RUN_VERSION``, or SLURM's job id), if any."""
    return os.environ.get(RUN_VERSION) or SLURMEnvironment.job_id()


def next_version(logs: Path) -> int:
    """The ``N`` of the next ``logs/version_N``, as Lightning's loggers number their runs."""
    numbers = [int(p.name.split("_", 1)[1]) for p in logs.glob("version_*") if p.name.split("_", 1)[1].isdigit()]
    return max(numbers, default=-1) + 1


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
    - An MLFlowLogger without a ``tracking_uri`` (and no ``MLFLOW_TRACKING_URI``) stores its runs in
      ``lightning_logs/mlflow.db``, a SQLite database shared by all runs, and their artifacts in
      ``lightning_logs/mlartifacts/``; its run is named after the run folder (``version_N``) unless named.

    Raises:
        ValueError: MLflow is asked for but not installed; an MLFlowLogger comes first (the first logger gives the
            run folder, ``trainer.log_dir``, and an MLflow store has none); its tracking server does not answer.
    """
    classes = [_logger_class(entry) for entry in entries]
    mlflow = _mlflow_arguments(entries)
    if mlflow:
        try:
            import mlflow as _  # noqa: F401  # only where asked for: a default run never imports it
        except ImportError:
            raise ValueError(MLFLOW_MISSING) from None
    if classes[:1] and classes[0] and issubclass(classes[0], MLFlowLogger):
        raise ValueError(
            "`trainer.logger`: the first logger gives the run folder, and MLflow's store has none: list "
            "litpoly.loggers.ThrottledTensorBoardLogger or CSVLogger before MLFlowLogger (configs/loggers/mlflow.yaml)"
        )
    folders = [entry.init_args for entry, c in zip(entries, classes, strict=True) if c and issubclass(c, _FOLDERS)]
    run_name = None
    if folders:
        first = folders[0]
        if first.save_dir is None:
            first.save_dir = root
        if first.version is None and "://" not in str(first.save_dir):
            first.version = run_version() or next_version(Path(first.save_dir, first.name or ""))
        for init_args in folders[1:]:
            if init_args.save_dir is None:
                init_args.save_dir, init_args.name, init_args.version = first.save_dir, first.name, first.version
        if first.version is not None:
            run_name = first.version if isinstance(first.version, str) else f"version_{first.version}"
    for init_args in mlflow:
        if init_args.tracking_uri is None and "://" not in root:
            logs = Path(root, "lightning_logs")
            init_args.tracking_uri = f"sqlite:///{logs / MLFLOW_STORE}"
            init_args.artifact_location = init_args.artifact_location or str(logs / MLFLOW_ARTIFACTS)
        init_args.run_name = init_args.run_name or run_name
        if str(init_args.tracking_uri).startswith(("http://", "https://")):
            check_tracking_server(init_args.tracking_uri)


@contextlib.contextmanager
def mlflow_stores_in_turn(entries: list[Any]) -> Iterator[None]:
    """Run the block holding the lock of each SQLite MLflow store among ``entries`` (``trainer.logger``'s config
    entries, placed by :func:`place_loggers`); then, still holding it, create the logger's experiment in the store
    unless it is there.

    The block is where the command line makes its classes: MLflow's client builds a new SQLite store's tables by
    running its migrations when the logger is made, and Lightning's logger creates its experiment when the store
    has none. Two processes doing either at once (a sweep's workers starting their first trials, or two runs
    started together) break each other ("duplicate column name", or alembic's "expected to match one row"): a
    two-worker sweep logging to MLflow failed three of its four trials. A lock file per store (empty, in the
    temporary folder, named after the store's path) makes them take turns, on one machine; making the model, the
    data module and the Trainer waits its turn too. Once the store and its experiment exist, the experiment
    costs one query. A tracking server (``http://``) builds its own tables, once; there, two runs starting on a
    new experiment at the same moment may still both try to create it.
    """
    stores = {}
    for init_args in _mlflow_arguments(entries):
        uri = str(init_args.get("tracking_uri") or "")
        if uri.startswith("sqlite:///"):
            stores[Path(uri.removeprefix("sqlite:///")).resolve()] = (uri, init_args)
    if not stores:
        yield
        return
    from filelock import FileLock
    from mlflow.tracking import MlflowClient

    with contextlib.ExitStack() as held:
        for database in sorted(stores):  # always in the same order: two stores never deadlock
            digest = hashlib.sha256(str(database).encode()).hexdigest()[:16]
            held.enter_context(FileLock(Path(tempfile.gettempdir(), f"litpoly-mlflow-{digest}.lock")))
        yield
        for uri, init_args in stores.values():
            if init_args.get("run_id"):  # an existing run: its experiment is there already
                continue
            client, name = MlflowClient(uri), init_args.experiment_name
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name, artifact_location=init_args.get("artifact_location"))


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the ``with`` block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_tracking_server(uri: str, timeout: int = 10) -> None:
    """Ask the MLflow tracking server at ``uri`` once, within ``timeout`` seconds, whether it answers.

    MLflow's client retries a failed request for minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, with backoff), which
    is right during a run but would keep a run with a wrong address waiting, then fail it at its first logging call
    with its run folder half-written. Here one try, before anything is made.

    Raises:
        ValueError: The server does not answer, or refuses the request.
    """
    from mlflow.tracking import MlflowClient  # imported here: the extra is only needed where asked for

    with environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout)):
        try:
            MlflowClient(uri).search_experiments(max_results=1)
        except Exception as error:  # any failure (refused, timed out, not MLflow): the run could not log there
            reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
            why = reason.group(1) if reason else str(error).splitlines()[0][:200]
            fix = "start it, or give another `trainer.logger.tracking_uri` (or MLFLOW_TRACKING_URI)"
            raise ValueError(f"the MLflow tracking server {uri} does not answer ({why}): {fix}") from None


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


def _file_writer(experiment: SummaryWriter) -> Any:
    """The writer of a ``SummaryWriter``'s event file, to add a summary it has no ``add_*`` method for."""
    writer = experiment.file_writer  # made by SummaryWriter.__init__; None only after close()
    assert writer is not None, "the TensorBoard writer is closed"
    return writer


def flat_hparams(params: Mapping[str, Any], prefix: str = "") -> dict[str, HParamValue]:
    """``params`` as TensorBoard's HPARAMS tab takes them: nested keys joined by ``/``, values as numbers,
    booleans or strings (``None`` and lists as their text).

    Example:
        >>> flat_hparams({"lr": None, "net": {"width": 32}, "sizes": [1, 2]})
        {'lr': 'None', 'net/width': 32, 'sizes': '[1, 2]'}
    """
    flat: dict[str, HParamValue] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, prefix=f"{name}/"))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def run_hparams(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """What defines a run: the model's and the data module's hyperparameters, then what the Trainer decided.

    Keys starting with ``_`` (LightningCLI's bookkeeping) are left out; a hyperparameter of the model or the
    data keeps its value when it has the same name as one of the run's facts.
    """
    datamodule = getattr(trainer, "datamodule", None)
    params: dict[str, Any] = dict(datamodule.hparams) if datamodule is not None else {}
    params.update(pl_module.hparams)
    params = {k: v for k, v in params.items() if not str(k).startswith("_")}
    facts: dict[str, Any] = {
        "ckpt_path": str(trainer.ckpt_path),  # what a resumed run, or validate/test/predict, started from
        "model": type(pl_module).__qualname__,
        "data": type(datamodule).__qualname__ if datamodule is not None else "None",
        "seed": torch.initial_seed(),
        "precision": str(trainer.precision),
        "devices": trainer.world_size,
        "max_steps": trainer.max_steps,
        "max_epochs": trainer.max_epochs,
    }
    for key, value in facts.items():
        params.setdefault(key, value)
    return params


class RunReport(L.Callback):
    """Logs a run's hyperparameters, its config and its learning rate, for any model and any logger.

    ``validate``, ``test`` and ``predict`` runs record what they ran too: the checkpoint and its settings
    (in their ``hparams.yaml``).
    """

    def _evaluation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "fit":
            for logger in trainer.loggers:
                logger.log_hyperparams(run_hparams(trainer, pl_module))
            self._config_to_mlflow(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = run_hparams(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams(params)  # hparams.yaml for TensorBoard and CSV; params for MLflow
        self._config_to_mlflow(trainer)
        tensorboard = self._tensorboard(trainer)
        if tensorboard is None or not trainer.is_global_zero:
            return
        # The session's hyperparameters only, no fixed list of metrics: TensorBoard then offers every scalar
        # of every run as a metric column, so runs of different models and settings compare in one table.
        _, session_start, _ = hparams_summaries(flat_hparams(params), {})  # type: ignore[no-untyped-call]
        _file_writer(tensorboard.experiment).add_summary(session_start)
        config = self._config(trainer)
        if config is not None:
            text = "\n".join("    " + line for line in config.read_text().splitlines())  # a markdown code block
            tensorboard.experiment.add_text("config", text, global_step=0)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set at runtime by Lightning
        if every <= 0 or trainer.global_step % every or not trainer.loggers:
            return
        # On the same steps as Lightning writes `self.log` metrics: global_step - 1 is this step's index.
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        metrics = {"train/lr": lrs[0]} if len(lrs) == 1 else {f"train/lr-{i}": lr for i, lr in enumerate(lrs)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step - 1)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = self._tensorboard(trainer)
        if tensorboard is not None and trainer.is_global_zero:
            _, _, session_end = hparams_summaries({}, {})  # type: ignore[no-untyped-call]  # status: success
            _file_writer(tensorboard.experiment).add_summary(session_end)

    @staticmethod
    def _config(trainer: L.Trainer) -> Path | None:
        """The run's ``config.yaml``, written into the run folder by LightningCLI's SaveConfigCallback at setup."""
        first = trainer.loggers[0] if trainer.loggers else None
        config = Path(first.log_dir, "config.yaml") if isinstance(first, _FOLDERS) else None
        return config if config is not None and config.is_file() else None

    def _config_to_mlflow(self, trainer: L.Trainer) -> None:
        """The config to MLflow, which has no folder of the run's: as an artifact, and as params to compare runs by.

        The params are under ``config/``, apart from the hyperparameters (``lr``, ``seed``, …): MLflow refuses a
        param logged again with another value, and a hyperparameter's value (e.g. the lr a run used) may differ
        from its setting (``lr: null``: the optimizer's default). Lightning cuts each value to 250 characters;
        the artifact holds the whole file.
        """
        config = self._config(trainer)
        if config is None or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.log_hyperparams(flat_hparams(yaml.safe_load(config.read_text()) or {}, prefix="config/"))
                logger.experiment.log_artifact(logger.run_id, str(config))

    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)


class BackgroundWriter:
    """Runs logging calls on one worker thread, in the order they were submitted.

    ``SummaryWriter.add_image`` encodes the PNG and checksums the record in the calling thread: for a figure,
    far longer than a small model's training step. zlib releases the GIL, so on a worker thread that work
    overlaps training on another core. One worker keeps the events in order.

    Example:
        >>> written = []
        >>> writer = BackgroundWriter()
        >>> writer.submit(written.append, "an image")
        >>> writer.close()  # waits for every submitted call, and re-raises the first failure
        >>> written
        ['an image']
    """

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future[Any]] = []

    def submit(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="litpoly-writer")
        self._pending.append(self._pool.submit(function, *args, **kwargs))

    def close(self) -> None:
        """Wait for every submitted call; re-raise what failed in the worker."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()


def add_figure(experiment: SummaryWriter, tag: str, image: np.ndarray, step: int, colors: int = 64) -> None:
    """Log a plot to TensorBoard's IMAGES tab, as ``experiment.add_image`` would, in a fraction of the bytes.

    A plot has few colours: as a palette PNG of at most ``colors`` of them it looks the same and is about a
    quarter the size of the RGB PNG ``add_image`` writes. That matters beyond the disk: TensorBoard's event
    writer checksums every record in pure Python, holding the GIL, so a large image slows training down
    even when logged from another thread. Not for photographs, which need all their colours.

    Args:
        experiment: The ``SummaryWriter`` (``TensorBoardLogger.experiment``).
        tag: The image's name in TensorBoard.
        image: ``(height, width, 3)`` uint8 RGB.
        step: The global step it belongs to.
        colors: At most this many colours (2 to 256).
    """
    from PIL import Image  # imported here: only runs that log figures need it

    height, width, _ = image.shape
    buffer = io.BytesIO()
    Image.fromarray(image).quantize(colors, method=Image.Quantize.FASTOCTREE).save(buffer, format="PNG")
    png = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    _file_writer(experiment).add_summary(Summary(value=[Summary.Value(tag=tag, image=png)]), step)
