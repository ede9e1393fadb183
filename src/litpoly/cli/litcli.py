"""``LitCLI``: LightningCLI with the run layer, extended through LightningCLI's own extension points.

- ``add_arguments_to_parser``: the run layer's settings groups (``--console.*``, ``--guard.*``, ``--checkpoint.*``,
  ``--best.*``, ``--early_stopping.*``).
- ``parse_arguments``: ``--ckpt_path`` found, read once and checked against the settings as soon as they are
  parsed, and the model's settings merged from what was checked.
- ``before_instantiate_classes``: the loggers a config lists by class put in the run folder; MLflow's stores made
  ready.
- ``instantiate_trainer(**kwargs)``: the Trainer arguments that depend on the parsed settings (the run layer's
  callbacks, its versions of Lightning's default logger, profiler and checkpoint writer).
- ``save_config_callback``: ``config.yaml`` records the command as given, not as completed here.
- ``before_<subcommand>``: from here on an error is the run's, not a setting's (see :func:`litpoly.cli.run`).
"""

from __future__ import annotations

import copy
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO, ClusterEnvironment
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from litpoly import compat, signals, slurm
from litpoly.callbacks import (
    BestSettings,
    ConsoleReport,
    EarlyStoppingSettings,
    ExactResume,
    LineProgress,
    PeriodicCheckpoint,
    PredictionWriter,
    RunGuard,
    RunReport,
    SignalStop,
    TimedProgressBar,
    WeightsAsSaved,
)
from litpoly.cli.arguments import given_keys
from litpoly.cli.checks import check_against_checkpoint, check_trains_something, check_writable
from litpoly.console import say, without_passwords
from litpoly.errors import AlreadyDone, CheckpointError, Interrupted, SettingError
from litpoly.loggers import ThrottledTensorBoardLogger, place_loggers, prepare_mlflow_stores
from litpoly.plugins import AtomicCheckpointIO, NullProfiler
from litpoly.runs import (
    LOGS,
    claim_version,
    experiment,
    find_checkpoint,
    next_run_folder,
    resume_candidates,
    root_dir,
    run_name,
    training_done,
)

#: Defaults for every run's Trainer; a config or a flag overrides them.
TRAINER_DEFAULTS: dict[str, Any] = {
    # RunReport logs the hyperparameters itself, with the run's facts; Lightning's automatic call would add a
    # second, partial entry to the HPARAMS tab.
    "enable_autolog_hparams": False,
}


def _refuse_unsafe_loading(config: Namespace) -> None:
    """Checkpoints are read weights-only on every path: a setting that would let Lightning unpickle code is refused,
    not silently overridden."""
    if config.get("weights_only") is False:
        raise SettingError(
            "`weights_only` false is not allowed: checkpoints are read weights-only, so no code they carry ever "
            "runs (give true, or leave it out)"
        )
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in ("1", "y", "yes", "true"):
        raise SettingError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set: checkpoints are read weights-only, so no code they carry ever "
            "runs (unset it)"
        )


class Stage:
    """How far a command got: ``running`` once its subcommand (``trainer.fit`` …) has begun, with its ``trainer``."""

    running = False
    subcommand: str | None = None
    trainer: Trainer | None = None

    def interrupted(self, signum: int) -> Interrupted:
        """What a signal outside of training stopped, said as an :class:`Interrupted` (training itself is
        ``RunGuard``'s to stop)."""
        if not self.running or self.trainer is None:
            what = signals.not_begun()
        elif self.subcommand != "fit":
            what = f"stopped before `{self.subcommand}` finished; nothing was saved."
        elif self.trainer.global_step == 0:
            what = "stopped before training began; nothing was saved."
        else:
            step = self.trainer.global_step
            what = f"stopped at step {step}; --ckpt_path last resumes the run from its newest checkpoint."
        return Interrupted(f"{signal.Signals(signum).name}: {what}", signum=signum)


class RecordedConfig(SaveConfigCallback):
    """LightningCLI's ``config.yaml``, holding the command's settings as given (``as_given``): neither the model
    settings LightningCLI merges from a checkpoint nor the loggers' folders and versions that
    :func:`~litpoly.loggers.place_loggers` fills in, so that the file runs again as the same command, as a new run.

    Without the passwords in its URLs (a tracking server's ``http://user:password@host``, or one from
    ``MLFLOW_TRACKING_URI``): the file is copied to TensorBoard's text tab and to MLflow's artifacts. A run of the
    file again takes its credentials from the environment (``MLFLOW_TRACKING_USERNAME`` and ``…_PASSWORD``)."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, as_given: Namespace, **kwargs: Any) -> None:
        super().__init__(parser, without_passwords(as_given), **kwargs)


def subcommands_to_build(argv: Sequence[str]) -> tuple[str, ...]:
    """The subcommands whose parsers a command needs: the one it begins with, or all of them for a command that
    begins with none (``--help``, a mistyped subcommand: the usage lists them all).

    Each subcommand's parser holds every argument of the Trainer, the model, the data and the run layer; building
    the three a command does not run cost every command, and every trial a sweep runs in its process, time for
    nothing: a command builds the one it runs.

    Example:
        >>> subcommands_to_build(["fit", "--trainer.max_steps", "10"]), subcommands_to_build(["--help"])
        (('fit',), ('fit', 'validate', 'test', 'predict'))
    """
    every = tuple(LightningCLI.subcommands())
    return (argv[0],) if argv and argv[0] in every else every


class LitCLI(LightningCLI):
    """LightningCLI with the run layer: its callbacks, cheaper defaults, checks and one-line errors.

    Args:
        argv: The command's words, to tell the model settings given from those of a default, and the subcommand
            whose parser to build.
        stage: Set to running when the subcommand begins.
        **kwargs: ``LightningCLI``'s.
    """

    def __init__(self, argv: Sequence[str], stage: Stage, **kwargs: Any) -> None:
        self.argv, self.stage = list(argv), stage
        self.checked_checkpoint: tuple[Path, dict[str, Any]] | None = None  # --ckpt_path, as read and checked
        self.held_ckpt_path: str | None = None  # --ckpt_path, while LightningCLI would read it (parse_arguments)
        if isinstance(parser_kwargs := kwargs.get("parser_kwargs"), dict):
            # A subcommand's parser settings for the parser built alone (LightningCLI would hand those of the
            # others to the main parser); the main parser's own stay.
            every, built = LightningCLI.subcommands(), subcommands_to_build(self.argv)
            kwargs["parser_kwargs"] = {k: v for k, v in parser_kwargs.items() if k in built or k not in every}
        super().__init__(save_config_callback=RecordedConfig, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """LightningCLI's subcommands, those of :func:`subcommands_to_build` (what each skips of its method's
        arguments is LightningCLI's)."""
        every = LightningCLI.subcommands()
        return {name: every[name] for name in subcommands_to_build(self.argv)}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ConsoleReport, "console")
        # Added as plain class groups rather than Lightning callback groups, so that `instantiate_trainer` can
        # add each only where it applies: RunGuard to fit, the checkpoint only when checkpointing is on
        # (Lightning refuses a ModelCheckpoint with `--trainer.enable_checkpointing false`).
        parser.add_class_arguments(RunGuard, "guard", instantiate=True)
        parser.add_class_arguments(PeriodicCheckpoint, "checkpoint", instantiate=True)
        # A run resumed in its own folder (a requeued SLURM job) overwrites its last.ckpt, as a run that was never
        # stopped would, rather than writing last-v1.ckpt beside it.
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.enable_version_counter": False})
        parser.add_class_arguments(BestSettings, "best", instantiate=True)
        parser.add_class_arguments(EarlyStoppingSettings, "early_stopping", instantiate=True)
        # Early stopping watches the metric the best checkpoint ranks by: one setting, not two that could disagree.
        parser.link_arguments("best.monitor", "early_stopping.monitor")
        parser.link_arguments("best.mode", "early_stopping.mode")
        parser.add_argument(
            "--compile", type=bool, default=False,
            help="torch.compile the model's forward (what self(x) runs; its steps stay eager), in place: its "
            "checkpoints load with or without it",
        )  # fmt: skip

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse, then find and check ``--ckpt_path``, and keep the command's settings as given.

        Here rather than in ``before_instantiate_classes``: right after parsing, LightningCLI loads the checkpoint
        named by ``ckpt_path`` and merges the model's settings from it into the config; ``last``, ``best`` and a
        checkpoint that is not ours to load must be settled before that, and ``config.yaml`` records the command,
        which is what runs it again (and what tells its experiment, see :mod:`litpoly.runs`).
        """
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if subcommand == "fit":
            check_trains_something(config.trainer)
        if subcommand and not config.trainer.get("fast_dev_run"):  # (fast_dev_run writes nothing)
            check_writable(root_dir(config.trainer))
        if subcommand and config.get("ckpt_path") is not None:
            self._find_checkpoint(subcommand, config)
        self.save_config_kwargs = {**self.save_config_kwargs, "as_given": copy.deepcopy(config)}
        if subcommand and self.checked_checkpoint is not None:
            self._merge_model_settings(subcommand, self.checked_checkpoint[1])

    def _merge_model_settings(self, subcommand: str, checkpoint: dict[str, Any]) -> None:
        """Merge the checkpoint's model settings into the config, as LightningCLI does next, but from the checkpoint
        that was read and checked: LightningCLI would read the file again, and a file swapped in between would give
        the model other settings than those checked, and could claim any memory (its read has no size check).
        ``ckpt_path`` is kept from LightningCLI's step and put back before the classes are made."""
        if settings := compat.checkpoint_model_settings(subcommand, checkpoint):
            self.config = self.parser.parse_object(settings, self.config)
        self.held_ckpt_path, self.config[subcommand].ckpt_path = self.config[subcommand].ckpt_path, None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        if self.held_ckpt_path is not None:
            config.ckpt_path, self.held_ckpt_path = self.held_ckpt_path, None
        self._place_loggers(config.trainer)

    def _find_checkpoint(self, subcommand: str, config: Namespace) -> None:
        """Turn ``--ckpt_path`` into a file (``last``, ``best``: of this command's experiment, see
        :mod:`litpoly.runs`), read it once, weights only, and check it against the settings, before LightningCLI
        reads the model's from it. What was checked is what the Trainer restores (``AtomicCheckpointIO``)."""
        _refuse_unsafe_loading(config)
        root = root_dir(config.trainer)
        if "://" in root and config.ckpt_path in ("last", "best"):
            raise CheckpointError(
                f"`ckpt_path` {config.ckpt_path} looks in a local `trainer.default_root_dir`, not {root}: give the "
                "checkpoint's path"
            )
        logs = Path(root, LOGS)
        of = experiment(without_passwords(config.as_dict()))  # as its config.yaml records it
        if subcommand == "fit" and config.ckpt_path == "last" and not resume_candidates(logs, of):
            # The auto-resume idiom of preemptible jobs (SLURM --requeue, spot instances): the same command is
            # launched again and again, and the first launch has nothing to resume. As in Lightning: start fresh.
            others = len({path.parents[1] for path in resume_candidates(logs)})  # runs, not files
            aside = f" ({others} with other model or data settings left alone)" if others else ""
            say(f"No checkpoint of a run with these settings under {logs}{aside}: starting a new run.")
            config.ckpt_path = None
            return
        path, checkpoint = find_checkpoint(config.ckpt_path, logs, of)
        check_against_checkpoint(config, checkpoint, given_keys(self.argv, "model"), path)
        if subcommand == "fit" and (done := training_done(config, checkpoint)) is not None:
            raise AlreadyDone(
                f"{path} has finished this schedule ({done}): nothing to train, nothing written ({done.hint})."
            )
        if subcommand != "fit":
            # Evaluating trains nothing: the callbacks' states (which checkpoint was best, early stopping's
            # patience, the loader's position) would be restored into callbacks this command does not have. Empty,
            # not absent: Lightning calls the callbacks' `on_load_checkpoint` only when the checkpoint has the key.
            checkpoint = {**checkpoint, "callbacks": {}}
        config.ckpt_path = str(path)
        self.checked_checkpoint = (path, checkpoint)

    def _place_loggers(self, trainer: Namespace) -> None:
        """The loggers a config lists by class (``configs/loggers/*.yaml``, ``--trainer.logger CLASS``) completed to
        write where the run does (see :func:`~litpoly.loggers.place_loggers`); MLflow's SQLite stores built once,
        in turn. ``fast_dev_run`` writes nothing, so its loggers are not even made (MLflow's would create its store),
        but a logger that cannot work is said even there."""
        given = trainer.get("logger")
        if not isinstance(given, Namespace | list):
            return
        placed = given if isinstance(given, list) else [given]
        place_loggers(placed, root_dir(trainer))
        if trainer.get("fast_dev_run"):
            trainer.logger = None
        else:
            prepare_mlflow_stores(placed)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The Trainer, with the run layer's callbacks and its versions of Lightning's defaults.

        - ``PeriodicCheckpoint`` from ``--checkpoint.*`` (``save_last``): every run has ``checkpoints/last.ckpt``.
        - ``AtomicCheckpointIO``: no checkpoint is ever half-written (unless ``--trainer.plugins`` has a CheckpointIO).
        - ``TimedProgressBar``: redrawn ten times a second, not every step; ``LineProgress`` (whole lines) when
          the output goes to a file or a pipe rather than a terminal.
        - ``ThrottledTensorBoardLogger`` where Lightning would make its default ``TensorBoardLogger``:
          the same files, flushed every 2 s instead of after every logging call.
        - ``NullProfiler`` where Lightning would make its default ``PassThroughProfiler``: both record
          nothing, but Lightning's costs something on each of the dozens of hook calls of every step; and it
          spares Lightning calling the callbacks' empty step hooks.
        - ``RunReport`` (hyperparameters, config), Lightning's ``LearningRateMonitor`` (with a logger),
          ``WeightsAsSaved`` (a checkpoint's weights in the run's precision) and ``SignalStop`` (a signal outside of
          training); for ``fit``, ``RunGuard`` (``--guard.*``), ``ExactResume`` (the training DataLoader made
          resumable, the RNG states in every checkpoint), the best checkpoint (``--best.monitor``) and early
          stopping (``--early_stopping.patience``); ``PredictionWriter`` for ``predict``.

        Passed as the Trainer arguments LightningCLI's ``instantiate_trainer`` takes, rather than as
        ``trainer_defaults`` (which are fixed before parsing and always apply), so that
        ``--trainer.enable_checkpointing false``, ``--trainer.enable_progress_bar false``,
        ``--trainer.logger false`` and a user's own callbacks or loggers keep working as Lightning
        documents them, and so that a subcommand carries no callback it does not use: Lightning calls
        every callback's hooks on every step.
        """
        subconfig = self.config_init[self.subcommand] if self.subcommand else self.config_init
        config = subconfig.trainer
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        kwargs.setdefault("callbacks", [*callbacks, *self._run_layer_callbacks(subconfig, callbacks)])
        root = root_dir(config)
        if config.get("logger") in (None, True):  # Lightning's default logger, as Lightning would make it
            # Its run folder claimed now (see runs.claim_version), where Lightning would count at its first write.
            claims = "://" not in root and not config.get("fast_dev_run")  # (fast_dev_run writes nothing)
            version = run_name() or (claim_version(root) if claims else None)
            kwargs.setdefault("logger", ThrottledTensorBoardLogger(save_dir=root, version=version))
        elif config.get("logger") is False and not config.get("fast_dev_run") and "://" not in root:
            # Without a logger, Lightning writes config.yaml and checkpoints/ straight into the working folder, where
            # the next run's would collide with them: the run gets its own folder, named as a logger's would be.
            kwargs.setdefault("default_root_dir", str(next_run_folder(root)))
        null_profiler = NullProfiler() if config.get("profiler") is None and "profiler" not in kwargs else None
        if null_profiler is not None:
            kwargs["profiler"] = null_profiler
        given_plugins = config.get("plugins") or []
        given_plugins = given_plugins if isinstance(given_plugins, list) else [given_plugins]
        plugins = list(given_plugins)
        if not any(isinstance(p, CheckpointIO) for p in given_plugins):  # a user's own writer is theirs to keep
            # Handed over, not kept: the Trainer frees what it restored, and so must this command line.
            checked, self.checked_checkpoint = self.checked_checkpoint, None
            plugins.append(AtomicCheckpointIO(checked=checked))
        if (cluster := slurm.environment()) is not None and not any(isinstance(p, ClusterEnvironment) for p in plugins):
            plugins.append(cluster)  # SLURM's requeue signal is the command line's to answer (litpoly.slurm)
        if len(plugins) > len(given_plugins):
            kwargs.setdefault("plugins", plugins)
        trainer = super().instantiate_trainer(**kwargs)
        if null_profiler is not None:
            null_profiler.attach(trainer)  # it hides the callbacks' empty step hooks (see NullProfiler)
        return trainer

    def _run_layer_callbacks(self, subconfig: Namespace, given: list[Callback]) -> list[Callback]:
        """The run layer's callbacks for this subcommand, but those the user's own replace."""
        config = subconfig.trainer
        checkpointing = config.get("enable_checkpointing") is not False
        added: list[Callback] = []
        if checkpointing and not any(isinstance(c, ModelCheckpoint) for c in given):
            added.append(subconfig.checkpoint)
        if config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in given):
            # A bar redrawn in place on a terminal; whole lines in a file or a pipe, which keep every frame.
            added.append(TimedProgressBar() if sys.stdout.isatty() else LineProgress())
        added += [RunReport(), WeightsAsSaved(), SignalStop()]
        if self.subcommand == "fit":
            added += [subconfig.guard, ExactResume()]
            if config.get("logger") is not False and not any(isinstance(c, LearningRateMonitor) for c in given):
                added.append(LearningRateMonitor(logging_interval="step"))  # at Lightning's logging cadence
            if checkpointing and (best := subconfig.best.callback()) is not None:
                added.append(best)
            if (early_stopping := subconfig.early_stopping.callback()) is not None:
                added.append(early_stopping)
        if self.subcommand == "predict":
            added.append(PredictionWriter())
        return added

    def _running(self) -> None:
        self.stage.running, self.stage.subcommand, self.stage.trainer = True, self.subcommand, self.trainer
        if self.config[self.subcommand].get("compile"):
            # nn.Module.compile: in place, so the state dict keys stay the model's own. It compiles what `self(x)`
            # runs, not the steps: Dynamo cannot trace Lightning's `self.log` (what `torch.compile(model)` would
            # have Lightning compile too).
            self.model.compile()

    def before_fit(self) -> None:
        self._running()

    def before_validate(self) -> None:
        self._running()

    def before_test(self) -> None:
        self._running()

    def before_predict(self) -> None:
        self._running()
