"""The run's logger and what every run records in it, whatever the model.

:class:`ThrottledTensorBoardLogger` is Lightning's ``TensorBoardLogger``, flushed every ``flush_secs`` seconds
rather than after every logging call.

:class:`RunReport` records, for every ``fit``:

- the hyperparameters (the model's and the data module's ``hparams``, plus seed, precision, devices and the
  schedule) to every logger, and in TensorBoard's HPARAMS tab, where every scalar the run logs is a metric
  column (TensorBoard's own choice when runs declare no fixed list), so runs of different models line up;
- ``config``: the run's resolved ``config.yaml`` as text;
- ``train/lr``: each optimizer's learning rate at Lightning's logging cadence (what ``LearningRateMonitor``
  logs, without one more callback).

:class:`BackgroundWriter` moves costly TensorBoard writes off the training thread, and :func:`add_figure`
logs a plot as a small palette PNG.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
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
    ``--trainer.logger`` picks another.
    """

    def __init__(self, *args: Any, flush_secs: float = 2.0, **kwargs: Any) -> None:
        kwargs.setdefault("default_hp_metric", False)
        super().__init__(*args, flush_secs=flush_secs, **kwargs)  # flush_secs also goes to the SummaryWriter
        self.flush_secs = flush_secs
        self._last_flush = -math.inf

    @rank_zero_only
    def save(self) -> None:
        now = time.monotonic()
        if now - self._last_flush >= self.flush_secs:
            self._last_flush = now
            super().save()


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

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start(trainer, pl_module)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._evaluation_start(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = run_hparams(trainer, pl_module)
        for logger in trainer.loggers:
            logger.log_hyperparams(params)  # hparams.yaml for TensorBoard; params for MLflow; a file for CSV
        tensorboard = self._tensorboard(trainer)
        if tensorboard is None or not trainer.is_global_zero:
            return
        # The session's hyperparameters only, no fixed list of metrics: TensorBoard then offers every scalar
        # of every run as a metric column, so runs of different models and settings compare in one table.
        _, session_start, _ = hparams_summaries(flat_hparams(params), {})  # type: ignore[no-untyped-call]
        _file_writer(tensorboard.experiment).add_summary(session_start)
        config = Path(tensorboard.log_dir) / "config.yaml"
        if config.is_file():  # written by LightningCLI's SaveConfigCallback just before
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
