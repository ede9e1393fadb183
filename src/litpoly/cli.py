"""The command line: a LightningCLI for any LightningModule and LightningDataModule, with the run layer built in.

``python scripts/train.py {fit,validate,test,predict}`` trains and evaluates the classes a config names::

    python scripts/train.py fit                                       # the project's default config
    python scripts/train.py fit --config configs/rmsprop.yaml         # ... with what that file changes
    python scripts/train.py fit --config my_config.yaml               # another model and data, by class path
    python scripts/train.py fit --model mypkg.MyModel --data mypkg.MyData --trainer.max_epochs 30

Every ``__init__`` argument of the model and the data module is a flag and a YAML key (``--model.lr``,
``--data.batch_size``); the Trainer's own flags (``--trainer.accelerator gpu``, ``--trainer.devices 2``,
``--trainer.precision 64-true``, ``--trainer.max_epochs``, ``--trainer.max_steps``) pick the hardware and
the schedule. ``--help`` on any subcommand lists everything with its default.

**The default config.** The project's default run is a config file (``configs/default.yaml``, passed by
``scripts/train.py``): it is the base of every command that names no model or data class of its own. A
command that does (``--model``/``--data``, or a ``--config`` file with a ``class_path`` for either) starts
from those classes' own defaults and the Trainer's, not from the default run's settings.

What the run layer adds to every run, for any model: the console lines (``--console.*``), divergence and
signal handling (``--guard.*``, :class:`~litpoly.guard.RunGuard`), exact resume for a standard training DataLoader
(:class:`~litpoly.resume.ExactResume`), periodic and final checkpoints written atomically (``--checkpoint.*``),
a cheaper progress bar, logger and profiler, the hyperparameters and config in TensorBoard (and CSV and MLflow,
``--config configs/loggers/*.yaml``: the loggers a config lists by class are put in the run folder, see
:func:`~litpoly.loggers.place_loggers`), a CSV of predictions, and one-line errors for bad settings and checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import logging
import os
import re
import shutil
import sys
import textwrap
import warnings
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml
from jsonargparse import ArgumentParser, Namespace
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from litpoly.checkpoints import (
    AtomicCheckpointIO,
    BestSettings,
    EarlyStoppingSettings,
    PeriodicCheckpoint,
    last_checkpoints,
    read_checkpoint,
    resolve_checkpoint,
)
from litpoly.console import ConsoleReport, LineProgress, TimedProgressBar, say
from litpoly.errors import SettingError, TrainingStopped
from litpoly.guard import RunGuard
from litpoly.loggers import (
    RunReport,
    ThrottledTensorBoardLogger,
    mlflow_stores_in_turn,
    next_version,
    place_loggers,
    run_version,
)
from litpoly.predictions import PredictionWriter
from litpoly.profiler import NullProfiler
from litpoly.resume import ExactResume, WeightsAsSaved

#: Defaults for every run's Trainer; a config or a flag overrides them.
TRAINER_DEFAULTS: dict[str, Any] = {
    # RunReport logs the hyperparameters itself, with the run's facts; Lightning's automatic call would add a
    # second, partial entry to the HPARAMS tab.
    "enable_autolog_hparams": False,
}

#: The seed of every run unless ``--seed_everything`` says otherwise: the same command gives the same run.
DEFAULT_SEED = 1234

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def quiet_irrelevant_messages() -> None:
    """Silence Lightning messages that say nothing about a run, so the ones that do stand out."""
    for message in (
        # Lightning 2.6 calls a torch API that torch 2.9+ deprecates; nothing a user can act on.
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        # validate/test/predict restore a checkpoint's callback state into a new run folder; nothing is saved there.
        r"The dirpath has changed from",
        # Loaders that are plain iterables; the prediction writer does not use batch indices.
        r"Couldn't infer the batch indices",
        # CSVLogger finds the run folder made by the logger before it (configs/loggers/): where it belongs.
        r"Experiment logs directory .* exists and is not empty",
    ):
        warnings.filterwarnings("ignore", message=message)
    # addFilter ignores a filter it already has, so calling this again (tests do) adds nothing.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_advertising)
    logging.getLogger("lightning.fabric.utilities.seed").addFilter(_not_seed_line)


def _not_advertising(record: logging.LogRecord) -> bool:
    """Drop Lightning's tips for its cloud services, and its list of accelerators (``GPU available: …``):
    the run folder line says what the run uses, once it has started, so a run refused during setup prints
    its one error line alone."""
    return not record.getMessage().startswith(("💡 Tip", "GPU available:", "TPU available:", "HPU available:"))


def _not_seed_line(record: logging.LogRecord) -> bool:
    """Drop "Seed set to …": ConsoleReport prints the seed beside the run folder once a run starts; printed
    at parse time it would also precede every one-line settings error."""
    return "Seed set to" not in record.getMessage()  # "[rank: 1] Seed set to …" under DDP


def parse_error_line(message: str) -> str:
    r"""jsonargparse's message for a bad setting of a class given by class path (``--model``, ``--data``), cut to
    the class's own complaint under the setting's full name; other messages as they are.

    Example:
        >>> message = 'Parser key "model":\n  Errors:\n    - Problem with given class_path \'pkg.Model\':\n'
        >>> message += '        Parser key "lr":\n          Expected a float\n    - Expected a None'
        >>> parse_error_line(message)
        'Parser key "model.lr": Expected a float'
    """
    group = re.match(r'Parser key "([^"]+)":', message)
    problem = re.search(r"Problem with given class_path '([^']+)':\n((?:[ ]{8,}.*(?:\n|$))+)", message)
    if group is not None and problem is None and "Union subtypes" in message:  # e.g. trainer.precision
        subtypes = re.search(r"Subtypes: \[(.*)\]", message)
        given = re.search(r"Given value: (.*)", message)
        if subtypes is not None and given is not None:
            return f'Parser key "{group.group(1)}": Expected one of {subtypes.group(1)}. Got value: {given.group(1)}'
    if group is None or problem is None:
        return message
    detail = textwrap.dedent(problem.group(2)).strip()
    inner = re.match(r'Parser key "([^"]+)":\s*(.*)', detail, re.S)
    if inner is None:
        return f'Parser key "{group.group(1)}": {problem.group(1)}: {detail}'
    why = inner.group(2)
    union = re.search(r"Errors:\n\s*- (.*)", why)  # a setting that may also be None: the first type's complaint
    given = re.search(r"Given value: (.*)", why)
    if union is not None:
        why = union.group(1) + (f". Got value: {given.group(1)}" if given else "")
    return f'Parser key "{group.group(1)}.{inner.group(1)}": {why}'


def fail(message: str) -> NoReturn:
    """Report a user error on one line of stderr and exit with status 2, like argparse does."""
    _tell(f"error: {' '.join(message.split())}")
    raise SystemExit(2)


@rank_zero_only
def _tell(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- what the command line gives ------------------------------------------------------------------------------


def _config_files(args: Sequence[str]) -> list[dict[str, Any]]:
    """The YAML files ``--config``/``-c`` name in ``args``, loaded (files the parser will refuse are skipped:
    it reports them itself)."""
    files = []
    for i, arg in enumerate(args):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg in ("--config", "-c") and i + 1 < len(args):
            path = args[i + 1]
        if path is None:
            continue
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(content, dict):
            files.append(content)
    return files


def names_a_class(args: Sequence[str]) -> bool:
    """Whether ``args`` pick their own model or data class: ``--model CLASS``, ``--data CLASS``, or a config
    file whose ``model`` or ``data`` has a ``class_path`` (or is a class name)."""
    for arg in args:
        if arg in ("--model", "--data") or arg.startswith(("--model=", "--data=")):
            return True
    for config in _config_files(args):
        for group in ("model", "data"):
            value = config.get(group)
            if isinstance(value, str) or (isinstance(value, dict) and "class_path" in value):
                return True
    return False


def given_keys(args: Sequence[str], group: str) -> set[str]:
    """The settings of ``group`` (``model``, ``data``) that ``args`` give, by flag or in a config file."""
    keys = set()
    for arg in args:
        if arg.startswith(f"--{group}."):
            key = arg[len(group) + 3 :].split("=", 1)[0]
            keys.add(key.removeprefix("init_args.").split(".", 1)[0])
    for config in _config_files(args):
        value = config.get(group)
        if isinstance(value, dict):
            init_args = value.get("init_args", {}) if "class_path" in value else value
            keys |= set(init_args or {})
    return keys


# -- --ckpt_path against the settings given -----------------------------------------------------------------


def _class_path(value: Any) -> str | None:
    return value.get("class_path") if isinstance(value, Namespace | dict) else None


def check_against_checkpoint(config: Namespace, checkpoint: dict[str, Any], given: set[str], path: Path) -> None:
    """Compare the model settings a command gives with those of the checkpoint it loads.

    LightningCLI builds the model from the checkpoint's own settings (its ``hyper_parameters``), whatever the
    command line says. So a setting given that differs is not used: where the weights could not fit the model
    it would make, that is an error (one line naming it); otherwise a warning says it is ignored.

    Raises:
        ValueError: The checkpoint holds another model class, or weights that do not fit the model the
            given settings make.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    model = config.model
    configured = _class_path(model)
    saved = hparams.get("_class_path")
    if saved and configured and saved != configured:
        raise ValueError(
            f"`ckpt_path` {path} holds a {saved}, but this run's model is {configured}: give the settings the "
            "checkpoint was trained with (its run's --config)"
        )
    init_args = model.get("init_args", {}) if configured else model
    differ = sorted(k for k in given if k in hparams and k in init_args and init_args[k] != hparams[k])
    if not differ:
        return
    mismatch = _weights_mismatch(model, checkpoint.get("state_dict", {}))
    settings = ", ".join(f"`model.{k}` {init_args[k]!r}" for k in differ)
    if mismatch is not None:
        raise ValueError(
            f"`ckpt_path` {path} holds weights that do not fit the model {settings} makes ({mismatch}); leave "
            f"{'it' if len(differ) == 1 else 'them'} out to use the checkpoint's"
        )
    for k in differ:
        say(
            f"Warning: `model.{k}` {init_args[k]!r} is not used: the checkpoint's model was made with "
            f"{hparams[k]!r}, and LightningCLI restores the model's settings with its weights.",
            stderr=True,
        )


def _weights_mismatch(model_config: Namespace, state_dict: dict[str, Any]) -> str | None:
    """How the model the settings make differs from ``state_dict`` (a missing or extra weight, or a shape);
    ``None`` if the weights fit."""
    if not _class_path(model_config):
        return None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(LightningModule, "model", required=True)
    try:
        built = parser.instantiate_classes(parser.parse_object({"model": model_config.as_dict()})).model
    except Exception as error:  # the settings do not even make a model: they cannot match the weights
        return f"the settings do not make a model: {error}"
    ours = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}
    for key in sorted(ours.keys() | theirs.keys()):
        if ours.get(key) != theirs.get(key):
            return f"{key}: {theirs.get(key, 'absent')} in the checkpoint, {ours.get(key, 'absent')} here"
    return None


def _innermost(error: BaseException, kind: type[BaseException]) -> BaseException:
    """The first ``kind`` of exception in ``error``'s chain: jsonargparse wraps a class's own ``ValueError``
    (raised in its ``__init__``, naming the setting) in one about the union of types a class path may take."""
    innermost = error
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, kind):
            innermost = cause
        cause = cause.__cause__ or cause.__context__
    return innermost


def next_run_folder(logs: Path) -> Path:
    """``logs/version_N`` for the next ``N``, as Lightning's loggers number their runs (or the name
    :func:`~litpoly.loggers.run_version` gives)."""
    return logs / str(run_version() or f"version_{next_version(logs)}")


def root_dir(trainer_config: Namespace) -> str:
    """Where the run's ``lightning_logs/`` goes: ``--trainer.default_root_dir``, or the working folder."""
    root = str(trainer_config.get("default_root_dir") or os.getcwd())
    if "://" not in root:  # a local path: `~` expanded, as the Trainer does for its own default_root_dir
        root = os.path.normpath(os.path.expanduser(root))
    return root


def _summarized(method: Any, summary: str) -> Any:
    """``method`` with ``summary`` as its docstring's first line, which LightningCLI shows as the subcommand's help.
    (Lightning's own first lines are cut mid-sentence where its docstrings wrap.)"""

    @functools.wraps(method)
    def wrapper(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs)

    wrapper.__doc__ = f"{summary}\n\n{inspect.getdoc(method) or ''}"
    return wrapper


class LitTrainer(Trainer):
    """Lightning's Trainer, its subcommands described in whole sentences in ``train.py --help``."""

    fit = _summarized(Trainer.fit, "Train the model, validating it as the config says.")
    validate = _summarized(Trainer.validate, "Evaluate a checkpoint on the validation data.")
    test = _summarized(Trainer.test, "Evaluate a checkpoint on the test data.")
    predict = _summarized(Trainer.predict, "Write a checkpoint's predictions to predictions.csv in the run folder.")


# -- the CLI ------------------------------------------------------------------------------------------------


class LitCLI(LightningCLI):
    """LightningCLI with the run layer: its callbacks, cheaper defaults, checks and one-line errors."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ConsoleReport, "console")
        # Added as plain class groups rather than Lightning callback groups, so that `instantiate_trainer` can
        # add each only where it applies: RunGuard to fit, the checkpoint only when checkpointing is on
        # (Lightning refuses a ModelCheckpoint with `--trainer.enable_checkpointing false`).
        parser.add_class_arguments(RunGuard, "guard", instantiate=True)
        parser.add_class_arguments(PeriodicCheckpoint, "checkpoint", instantiate=True)
        parser.set_defaults({"checkpoint.save_last": True})
        parser.add_class_arguments(BestSettings, "best", instantiate=True)
        parser.add_class_arguments(EarlyStoppingSettings, "early_stopping", instantiate=True)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then check ``--ckpt_path`` before LightningCLI reads the model's settings from it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        if config.get("ckpt_path") is None:
            return
        argv = list(sys.argv[1:] if args is None else args)
        logs = Path(config.trainer.get("default_root_dir") or Path.cwd()).expanduser() / "lightning_logs"
        if subcommand == "fit" and config.ckpt_path == "last" and not last_checkpoints(logs):
            # The auto-resume idiom of preemptible jobs (SLURM --requeue, spot instances): the same command is
            # launched again and again, and the first launch has nothing to resume. As in Lightning: start fresh.
            say(f"No checkpoints/last.ckpt under {logs} to resume from: starting a new run.")
            config.ckpt_path = None
            return
        try:
            path = resolve_checkpoint(config.ckpt_path, logs)
            check_against_checkpoint(config, read_checkpoint(path), given_keys(argv, "model"), path)
        except ValueError as error:
            fail(str(error))
        config.ckpt_path = str(path)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with the run layer's callbacks and its versions of Lightning's defaults.

        - ``PeriodicCheckpoint`` from ``--checkpoint.*`` (``save_last``): every run has ``checkpoints/last.ckpt``.
        - ``AtomicCheckpointIO``: no checkpoint is ever half-written (unless ``--trainer.plugins`` is set).
        - ``TimedProgressBar``: redrawn ten times a second, not every step; ``LineProgress`` (whole lines) when
          the output goes to a file or a pipe rather than a terminal.
        - ``ThrottledTensorBoardLogger`` where Lightning would make its default ``TensorBoardLogger``:
          the same files, flushed every 2 s instead of after every logging call.
        - ``NullProfiler`` where Lightning would make its default ``PassThroughProfiler``: both record
          nothing, but Lightning's costs something on each of the dozens of hook calls of every step.
        - ``RunReport`` (hyperparameters, config) and ``WeightsAsSaved`` (a checkpoint's weights in the run's
          precision); for ``fit``, ``RunGuard`` (``--guard.*``), ``ExactResume`` (the training DataLoader made
          resumable, the RNG states in every checkpoint), the best checkpoint (``--best.monitor``) and early
          stopping (``--early_stopping.patience``); ``PredictionWriter`` for ``predict``.

        Added here rather than in ``trainer_defaults`` (which always applies) so that
        ``--trainer.enable_checkpointing false``, ``--trainer.enable_progress_bar false``,
        ``--trainer.logger false`` and a user's own callbacks or loggers keep working as Lightning
        documents them — and so that a subcommand carries no callback it does not use: Lightning calls
        every callback's hooks on every step.
        """
        subconfig = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = subconfig.trainer
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        defaults: list[Callback] = []
        if config.get("enable_checkpointing") is not False and not any(
            isinstance(c, ModelCheckpoint) for c in callbacks
        ):
            defaults.append(subconfig.checkpoint)
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            # A bar redrawn in place on a terminal; whole lines in a file or a pipe, which keep every frame.
            defaults.append(TimedProgressBar() if sys.stdout.isatty() else LineProgress())
        defaults.append(RunReport())
        defaults.append(WeightsAsSaved())
        if self.subcommand == "fit":
            defaults.append(subconfig.guard)
            defaults.append(ExactResume())
            if config.get("enable_checkpointing") is not False and (best := subconfig.best.callback()) is not None:
                defaults.append(best)
            try:
                early_stopping = subconfig.early_stopping.callback(subconfig.best)
            except ValueError as error:
                fail(str(error))
            if early_stopping is not None:
                defaults.append(early_stopping)
        if self.subcommand == "predict":
            defaults.append(PredictionWriter())
        if defaults:
            kwargs.setdefault("callbacks", [*callbacks, *defaults])
        root = root_dir(config)
        if config.get("logger") in (None, True):  # Lightning's default logger, as Lightning would make it
            kwargs.setdefault("logger", ThrottledTensorBoardLogger(save_dir=root, version=run_version()))
        elif config.get("logger") is False and not config.get("fast_dev_run") and "://" not in root:
            # Without a logger, Lightning writes config.yaml and checkpoints/ straight into the working folder, where
            # the next run's would collide with them: the run gets its own folder, numbered like a logger's.
            kwargs.setdefault("default_root_dir", str(next_run_folder(Path(root) / "lightning_logs")))
        if config.get("profiler") is None:
            kwargs.setdefault("profiler", NullProfiler())
        if not config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        trainer = (self.config[self.subcommand] if self.subcommand else self.config).trainer
        given = trainer.get("logger")
        placed: list[Any] = []
        if isinstance(given, Namespace | list):  # loggers by class (configs/loggers/*.yaml, --trainer.logger CLASS)
            # Completed on a copy, which is what gets made: config.yaml keeps them as given (`save_dir: null`), so
            # that it runs again as a new run, not into this one's folder. fast_dev_run writes nothing, so its
            # loggers are not even made (MLflow's would create its store).
            copied = copy.deepcopy(given)
            placed = copied if isinstance(copied, list) else [copied]
            try:
                place_loggers(placed, root_dir(trainer))
            except ValueError as error:  # MLflow not installed, or its server not answering: said even by fast_dev_run
                fail(str(error))
            trainer.logger = None if trainer.get("fast_dev_run") else copied
        # The classes check their own arguments (ValueError), and the Trainer its flags
        # (MisconfigurationException, e.g. `--trainer.accelerator gpu` without a GPU). Both are user
        # errors: one line, not a traceback. Nothing has been written yet at this point, but for an MLflow logger's
        # SQLite store, which MLflow's client creates when the logger is made.
        try:
            with mlflow_stores_in_turn([] if trainer.get("fast_dev_run") else placed):
                super().instantiate_classes()
        except ValueError as error:
            fail(str(_innermost(error, ValueError)))
        except MisconfigurationException as error:
            fail(f"invalid Trainer setting: {error}")
        finally:
            trainer.logger = given
        # Lightning's model summary runs the model on its `example_input_array` as it is, but a true-precision run
        # (64-true, bf16-true) converts the weights, not that input: it is converted here as each batch will be.
        if self.model.example_input_array is not None:
            self.model.example_input_array = self.trainer.precision_plugin.convert_input(self.model.example_input_array)


def cli_main(
    args: list[str] | None = None,
    default_config: Path | str | None = None,
    callbacks: Sequence[Callback] = (),
) -> LitCLI:
    """Run the command line; ``args`` replaces ``sys.argv[1:]`` (handy in tests).

    Args:
        args: The command line, e.g. ``["fit", "--trainer.max_steps", "100"]``.
        default_config: The project's default run, the base of every command that names no model or data
            class of its own (see the module's docstring).
        callbacks: Added to the run's callbacks without being part of its config: what a caller needs to watch
            the run (a sweep's pruning), not what the run is. The run's ``config.yaml`` stays the command's.

    Bad settings end with one line on stderr naming the setting and exit status 2, before any run folder is
    created (or, for a combination found during setup, with the run folder removed again).
    """
    quiet_irrelevant_messages()
    argv = list(sys.argv[1:] if args is None else args)
    # Parse errors are raised, not printed with the usage text: `fail` turns them into one line.
    parser_kwargs: dict[str, Any] = {name: {"exit_on_error": False} for name in SUBCOMMANDS}
    parser_kwargs["exit_on_error"] = False
    if default_config is not None and not names_a_class(argv):
        for name in SUBCOMMANDS:
            parser_kwargs[name]["default_config_files"] = [str(default_config)]
    try:
        return LitCLI(
            trainer_class=LitTrainer,
            seed_everything_default=DEFAULT_SEED,
            # LightningCLI adds trainer_defaults' callbacks to the configured ones.
            trainer_defaults={**TRAINER_DEFAULTS, "callbacks": list(callbacks)} if callbacks else TRAINER_DEFAULTS,
            parser_kwargs=parser_kwargs,
            # The model owns its optimizer (configure_optimizers); LightningCLI's own `--optimizer` would
            # silently override it, so it is switched off.
            auto_configure_optimizers=False,
            args=args,
        )
    except ArgumentError as error:
        fail(parse_error_line(str(error)))
    except SettingError as error:  # found during setup or at the first validation
        if error.run_folder is not None:  # see ConsoleReport.on_exception
            shutil.rmtree(error.run_folder, ignore_errors=True)
            with contextlib.suppress(OSError):  # and its parent, if this run made that too
                error.run_folder.parent.rmdir()
        fail(str(error))
    except TrainingStopped as stop:  # diverged (exit 1) or interrupted (exit 128 + signal number)
        _tell(f"error: {stop}" if stop.exit_code == 1 else str(stop))  # under DDP every process stops, one says why
        raise SystemExit(stop.exit_code) from None
