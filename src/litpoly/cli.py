"""The command line: a LightningCLI over :class:`PolynomialRegressor` and :class:`SineDataModule`.

Run ``python scripts/train.py fit`` to train the seed's cubic with SGD, then ``validate``, ``test``
or ``predict`` with ``--ckpt_path``. Every ``__init__`` argument of the model and the data module
is a flag and a YAML key (``--model.optimizer rmsprop``, ``--data.num_samples 500``); the Trainer's
own flags (``--trainer.accelerator gpu``, ``--trainer.devices 2``, ``--trainer.precision 64-true``)
pick the hardware. ``--help`` on any subcommand lists everything with its default.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from argparse import ArgumentError
from pathlib import Path
from typing import Any, NoReturn

from lightning.fabric.plugins.environments.slurm import SLURMEnvironment
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from litpoly.callbacks import PredictionWriter, SeedReport, TimedProgressBar
from litpoly.dashboard import TensorBoardReport, ThrottledTensorBoardLogger
from litpoly.data import SineDataModule
from litpoly.guard import (
    AtomicCheckpointIO,
    PeriodicCheckpoint,
    RunGuard,
    TrainingStopped,
    checkpoint_degree,
    resolve_checkpoint,
)
from litpoly.model import PolynomialRegressor
from litpoly.parity import ParityCheck
from litpoly.profiler import NullProfiler

#: The seed's run: 2400 full-batch optimizer steps in one epoch, validated every 100 steps.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_steps": 2400,
    "val_check_interval": 100,
    # Count validation in optimizer steps across the one long epoch, not per epoch.
    "check_val_every_n_epoch": None,
    # Lightning writes step metrics only every `log_every_n_steps`; 50 gives 48 points per curve.
    "log_every_n_steps": 50,
    # TensorBoardReport logs the hyperparameters itself, with seed, precision and the final metrics;
    # Lightning's automatic call would add a second, metric-less HPARAMS entry.
    "enable_autolog_hparams": False,
    # The summary of a 4-parameter model says little, and the callback behind it costs ~3% of every
    # step here (see `instantiate_trainer`). `--trainer.enable_model_summary true` brings it back.
    "enable_model_summary": False,
}

DEFAULT_SEED = 1234

#: Save a checkpoint every this many steps (besides the end of training and an interruption).
CHECKPOINT_EVERY = 500


def quiet_irrelevant_messages() -> None:
    """Silence Lightning messages that say nothing about a litpoly run, so the ones that do stand out."""
    for message in (
        # Lightning 2.6 calls a torch API that torch 2.9+ deprecates; nothing a user can act on.
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        # validate/test/predict restore a checkpoint's callback state into a new run folder; nothing is saved there.
        r"The dirpath has changed from",
        # Our loaders are plain iterables; the prediction writer does not use batch indices.
        r"Couldn't infer the batch indices",
    ):
        warnings.filterwarnings("ignore", message=message)
    # addFilter ignores a filter it already has, so calling this again (tests do) adds nothing.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_advertising)
    logging.getLogger("lightning.fabric.utilities.seed").addFilter(_not_seed_line)


def _not_advertising(record: logging.LogRecord) -> bool:
    """Drop Lightning's tips for its cloud services, printed on every run."""
    return not record.getMessage().startswith("💡 Tip")


def _not_seed_line(record: logging.LogRecord) -> bool:
    """Drop "Seed set to …": SeedReport prints the seed beside the run folder once a run starts;
    printed at parse time it would also precede every one-line settings error."""
    return "Seed set to" not in record.getMessage()  # "[rank: 1] Seed set to …" under DDP


def fail(message: str) -> NoReturn:
    """Report a user error on one line of stderr and exit with status 2, like argparse does."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


class LitPolyCLI(LightningCLI):
    """LightningCLI with litpoly's defaults, cross-setting checks and one-line errors."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(SeedReport, "console")
        parser.add_lightning_class_args(ParityCheck, "parity")
        parser.add_lightning_class_args(TensorBoardReport, "tensorboard")
        # ModelCheckpoint's own settings as `--checkpoint.*`. Added as a plain class group rather than
        # as a Lightning callback group so that `instantiate_trainer` can leave it out when the user
        # says `--trainer.enable_checkpointing false` (Lightning refuses both at once).
        parser.add_class_arguments(PeriodicCheckpoint, "checkpoint", instantiate=True)
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.every_n_train_steps": CHECKPOINT_EVERY})

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` before LightningCLI reads hyperparameters from it."""
        super().parse_arguments(parser, args)
        if not self.config.get("subcommand"):
            return
        config = self.config[self.config.subcommand]
        if config.get("ckpt_path") is None:
            return
        root = Path(config.trainer.get("default_root_dir") or Path.cwd())
        try:
            path = resolve_checkpoint(config.ckpt_path, root / "lightning_logs")
            degree = checkpoint_degree(path)
        except ValueError as error:
            fail(str(error))
        default_degree = inspect.signature(PolynomialRegressor).parameters["degree"].default
        if degree is not None and config.model.degree not in (degree, default_degree):
            fail(
                f"`ckpt_path` {path} holds a degree-{degree} model, but `model.degree` is {config.model.degree}; "
                "leave `model.degree` out to take the checkpoint's"
            )
        config.ckpt_path = str(path)

    def before_instantiate_classes(self) -> None:
        """Check what depends on several settings, before anything is built or written."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        degree, num_samples = config.model.degree, config.data.num_samples
        if num_samples < degree + 1:
            fail(
                f"Expected `data.num_samples` >= `model.degree` + 1 = {degree + 1} (a degree-{degree} polynomial "
                f"needs that many points), got {num_samples}"
            )
        if self.subcommand == "fit" and (config.trainer.max_steps is None or config.trainer.max_steps <= 0):
            fail(f"Expected `trainer.max_steps` to be a positive integer, got {config.trainer.max_steps}")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with litpoly's versions of Lightning's default checkpoint, progress bar and logger.

        - ``PeriodicCheckpoint`` from ``--checkpoint.*`` (``save_last``, every ``CHECKPOINT_EVERY`` steps):
          every run has ``checkpoints/last.ckpt``, and a killed run loses at most that many steps.
        - ``AtomicCheckpointIO``: no checkpoint is ever half-written (unless ``--trainer.plugins`` is set).
        - ``TimedProgressBar``: redrawn ten times a second, not every step (a redraw costs more than a
          whole raw training step on 2000 points).
        - ``ThrottledTensorBoardLogger`` where Lightning would make its default ``TensorBoardLogger``:
          the same files, flushed every 2 s instead of after every logging call.
        - ``NullProfiler`` where Lightning would make its default ``PassThroughProfiler``: both record
          nothing, but Lightning's costs ~0.5 µs for each of the ~80 hook calls of a litpoly step.
        - ``RunGuard`` for ``fit`` and ``PredictionWriter`` for ``predict`` only.

        Added here rather than in ``trainer_defaults`` (which always applies) so that
        ``--trainer.enable_checkpointing false``, ``--trainer.enable_progress_bar false``,
        ``--trainer.logger false`` and a user's own callbacks or loggers keep working as Lightning
        documents them — and so that a subcommand carries no callback it does not use: Lightning calls
        every callback's hooks on every step (~5–10 µs a callback here, against a 65 µs raw step).
        """
        subconfig = self._subconfig_init()
        config = subconfig.trainer
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        defaults: list[Callback] = []
        if config.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            defaults.append(subconfig.checkpoint)
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            defaults.append(TimedProgressBar())
        if self.subcommand == "fit":
            defaults.append(RunGuard())
        if self.subcommand == "predict":
            defaults.append(PredictionWriter())
        if defaults:
            kwargs.setdefault("callbacks", [*callbacks, *defaults])
        if config.get("logger") in (None, True):  # Lightning's default logger, as Lightning would make it
            root = str(config.get("default_root_dir") or os.getcwd())
            if "://" not in root:  # a local path: `~` expanded, as the Trainer does for its own default_root_dir
                root = os.path.normpath(os.path.expanduser(root))
            kwargs.setdefault("logger", ThrottledTensorBoardLogger(save_dir=root, version=SLURMEnvironment.job_id()))
        if config.get("profiler") is None:
            kwargs.setdefault("profiler", NullProfiler())
        if not config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def _subconfig_init(self) -> Any:
        return self.config_init[self.subcommand] if self.subcommand else self.config_init

    def instantiate_classes(self) -> None:
        # The classes check their own arguments (ValueError), and the Trainer its flags
        # (MisconfigurationException, e.g. `--trainer.accelerator gpu` without a GPU). Both are user
        # errors: one line, not a traceback. Nothing has been written yet at this point.
        try:
            super().instantiate_classes()
        except ValueError as error:
            fail(str(error))
        except MisconfigurationException as error:
            fail(f"invalid Trainer setting: {error}")


def cli_main(args: list[str] | None = None) -> LitPolyCLI:
    """Run the litpoly command line; ``args`` replaces ``sys.argv[1:]`` (handy in tests).

    Bad settings end with one line on stderr naming the setting and exit status 2, before any run
    folder is created.
    """
    quiet_irrelevant_messages()
    try:
        return LitPolyCLI(
            PolynomialRegressor,
            SineDataModule,
            seed_everything_default=DEFAULT_SEED,
            trainer_defaults=TRAINER_DEFAULTS,
            # Raise parse errors instead of printing usage text: `fail` turns them into one line.
            parser_kwargs={"exit_on_error": False},
            # The model owns its optimizer choice (`--model.optimizer`); LightningCLI's own `--optimizer`
            # would silently override it, so it is switched off.
            auto_configure_optimizers=False,
            args=args,
        )
    except ArgumentError as error:
        fail(str(error))
    except TrainingStopped as stop:  # diverged (exit 1) or interrupted (exit 128 + signal number)
        _tell(f"error: {stop}" if stop.exit_code == 1 else str(stop))  # under DDP every process stops, one says why
        raise SystemExit(stop.exit_code) from None


@rank_zero_only
def _tell(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
