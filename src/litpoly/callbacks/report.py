"""What every run records in its loggers, whatever the model: :class:`RunReport`.

- the hyperparameters (the model's and the data module's ``hparams``, plus seed, precision, devices and the
  schedule) to every logger, and in TensorBoard's HPARAMS tab, where every scalar the run logs is a metric
  column (TensorBoard's own choice when runs declare no fixed list), so runs of different models line up;
- ``config``: the run's resolved ``config.yaml`` as text (MLflow, which has no run folder to hold the file: as an
  artifact, and its settings as params under ``config/``).

The learning rate is Lightning's ``LearningRateMonitor``'s (``lr-<Optimizer>``), which the CLI adds to every fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger  # imports no mlflow: its logger does, when made
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from litpoly.loggers import _FOLDERS, ResilientMLFlowLogger

HParamValue = int | float | str | bool


def file_writer(experiment: SummaryWriter) -> Any:
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
        file_writer(tensorboard.experiment).add_summary(session_start)
        config = self._config(trainer)
        if config is not None:
            text = "\n".join("    " + line for line in config.read_text().splitlines())  # a markdown code block
            tensorboard.experiment.add_text("config", text, global_step=0)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tensorboard = self._tensorboard(trainer)
        if tensorboard is not None and trainer.is_global_zero:
            _, _, session_end = hparams_summaries({}, {})  # type: ignore[no-untyped-call]  # status: success
            file_writer(tensorboard.experiment).add_summary(session_end)

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
                if isinstance(logger, ResilientMLFlowLogger):
                    logger.log_artifact(config)
                else:
                    logger.experiment.log_artifact(logger.run_id, str(config))

    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
