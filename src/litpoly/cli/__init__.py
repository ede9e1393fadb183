"""The command line: a LightningCLI for any LightningModule and LightningDataModule, with the run layer built in.

``python scripts/train.py {fit,validate,test,predict}`` trains and evaluates the classes a config names::

    python scripts/train.py fit                                       # the project's default config
    python scripts/train.py fit --config configs/rmsprop.yaml         # ... with what that file changes
    python scripts/train.py fit --config my_config.yaml               # another model and data, by class path
    python scripts/train.py fit --model mypkg.MyModel --data mypkg.MyData --trainer.max_epochs 30

Every ``__init__`` argument of the model and the data module is a flag and a YAML key (``--model.lr``,
``--data.batch_size``); the Trainer's own flags (``--trainer.accelerator gpu``, ``--trainer.devices 2``,
``--trainer.precision 64-true``, ``--trainer.max_epochs``, ``--trainer.max_steps``) pick the hardware and
the schedule. ``fit --help`` lists the Trainer's and the run layer's settings with their defaults;
``fit --model.help CLASS`` (``--data.help CLASS``) those of a model (data module) class, e.g.
``--model.help sinefit.PolynomialRegressor``.

**The default config** (:data:`DEFAULT_CONFIG`, ``configs/default.yaml``) is the base of every command that names no
model or data class of its own. A command that does (``--model``/``--data``, or a ``--config`` file with a
``class_path`` for either) starts from those classes' own defaults and the Trainer's, not from the default run's.

Two entry points: :func:`run` runs a command and raises a typed error (:mod:`litpoly.errors`) when it cannot;
:func:`main` is the process's entry point, which turns that error into one line on stderr and its exit status.
What the run layer adds to every run is listed on :class:`~litpoly.cli.litcli.LitCLI`.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
from argparse import ArgumentError
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from litpoly import compat, safe_yaml, signals, slurm
from litpoly.callbacks.console import run_folder_to_remove
from litpoly.cli.arguments import names_a_class
from litpoly.cli.litcli import TRAINER_DEFAULTS, LitCLI, Stage
from litpoly.console import one_line, without_passwords
from litpoly.errors import Interrupted, RunError, SettingError
from litpoly.runs import release_claims, run_name

#: The project's default run: the base of every command that names no model or data class of its own.
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "default.yaml"

#: The seed of every run unless ``--seed_everything`` says otherwise: the same command gives the same run.
DEFAULT_SEED = 1234

__all__ = ["DEFAULT_CONFIG", "DEFAULT_SEED", "LitCLI", "exit_status", "main", "run"]


def run(
    args: Sequence[str] | None = None,
    default_config: Path | str | None = None,
    callbacks: Sequence[Callback] = (),
) -> LitCLI:
    """Run a command (``fit``, ``validate``, ``test``, ``predict`` and its flags) in this process.

    Args:
        args: The command line, e.g. ``["fit", "--trainer.max_steps", "100"]``; ``None``: ``sys.argv[1:]``.
        default_config: The project's default run, the base of every command that names no model or data
            class of its own (see the module's docstring).
        callbacks: Added to the run's callbacks, not to its ``config.yaml``: what a caller needs to watch the run
            (a sweep's pruning), not what the run is.

    Returns the ``LitCLI``, whose ``trainer`` and ``model`` hold the finished run.

    Raises:
        SettingError: A bad setting (a ``CheckpointError`` for ``--ckpt_path``): found before any run folder is
            created, or during setup, with the run folder removed again.
        Diverged: Training diverged; no checkpoint of the diverged model was written.
        Interrupted: A signal (SIGINT, SIGTERM, SIGHUP) stopped the command: a training run at a step boundary, its
            state saved (see :mod:`litpoly.signals`); before training began, with the run folder removed again.
        AlreadyDone: ``fit --ckpt_path`` of a run that already finished its schedule; nothing was written.
    """
    compat.quiet_irrelevant_messages()
    safe_yaml.install()
    argv = list(sys.argv[1:] if args is None else args)
    stage = Stage()

    signals.forget()
    try:
        return _run(argv, stage, args, default_config, callbacks)
    except Interrupted as stop:
        if stop.signum != slurm.REQUEUE or not slurm.managed() or getattr(rank_zero_only, "rank", 0) != 0:
            raise
        raise Interrupted(f"{stop}; {slurm.requeue()}", stop.signum, stop.finished) from None
    finally:
        release_claims()  # a run folder claimed for a run that wrote nothing into it


def _run(
    argv: list[str],
    stage: Stage,
    args: Sequence[str] | None,
    default_config: Path | str | None,
    callbacks: Sequence[Callback],
) -> LitCLI:
    """:func:`run`'s command, what it raises turned into the errors :func:`run` names."""
    try:
        # While the settings are read, a signal stops the command at once; once the run has begun, at its next safe
        # point (see litpoly.signals).
        with signals.handled(signals.deferred(at_once=lambda: not stage.running), also=slurm.stops()):
            cli = LitCLI(argv, stage, args=args, **_cli_kwargs(argv, default_config, callbacks))
    except signals.Stop as stop:
        _remove_run_folder(stop.run_folder)
        raise stage.interrupted(stop.signum) from None
    except Exception as error:
        if (signum := signals.received()) is not None and not isinstance(error, RunError):
            # What failed after a stop signal failed because of it (a DataLoader worker the signal ended, say).
            raise stage.interrupted(signum) from None
        said = _one_line(error, stage)
        if said is None or said is error:
            raise
        raise said from None
    if (signum := signals.received()) is not None:  # after the run's last safe point: its results are complete
        name = signal.Signals(signum).name
        raise Interrupted(f"{name} after the run had finished: its results are complete.", signum, finished=True)
    return cli


def _one_line(error: Exception, stage: Stage) -> RunError | None:
    """What the command line says of ``error``, as a :class:`RunError`; ``None`` for a bug in the model's or the
    data's code, to see with its traceback."""
    if isinstance(error, ArgumentError):
        return SettingError(compat.parse_error_line(str(error)))
    if isinstance(error, RunError):  # a setting found during setup or at the first validation, a diverged run, …
        _remove_run_folder(error.run_folder)
        return error
    if isinstance(error, OSError) and not _trained(stage):
        # A file the data or the model could not read (or write) before training began: bad input, such as a
        # missing data file or a data_dir that is a file, said in one line; the run folder holds nothing yet.
        if stage.trainer is not None:
            _remove_run_folder(run_folder_to_remove(stage.trainer))
        last = [line for line in str(error).splitlines() if line.strip()][-1:]  # a DataLoader worker's: its last
        said = without_passwords(one_line(last[0] if last else error))  # a data URL's password is not printed
        return SettingError(said if said.startswith(type(error).__name__) else f"{type(error).__name__}: {said}")
    if stage.running:  # raised by the model's or the data's code at a step
        return None
    if isinstance(error, ValueError):  # the classes check their own arguments in __init__: a user error
        return SettingError(str(compat.innermost(error, ValueError)))
    if isinstance(error, MisconfigurationException):  # the Trainer's flags, e.g. `--trainer.accelerator gpu`
        return SettingError(f"invalid Trainer setting: {error}")
    return None


def _trained(stage: Stage) -> bool:
    """Whether the command's ``fit`` has taken a step (validate, test and predict never train)."""
    return stage.subcommand == "fit" and stage.trainer is not None and stage.trainer.global_step > 0


def _remove_run_folder(folder: Path | None) -> None:
    """Remove the run folder of a run stopped before it saved anything (see ``ConsoleReport.on_exception``)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
        with contextlib.suppress(OSError):  # and its parent, if this run made that too
            folder.parent.rmdir()


def _cli_kwargs(argv: list[str], default_config: Path | str | None, callbacks: Sequence[Callback]) -> dict[str, Any]:
    """LightningCLI's arguments for a command."""
    return {
        "trainer_class": compat.LitTrainer,
        "seed_everything_default": DEFAULT_SEED,
        # LightningCLI adds trainer_defaults' callbacks to the configured ones.
        "trainer_defaults": {**TRAINER_DEFAULTS, "callbacks": list(callbacks)} if callbacks else TRAINER_DEFAULTS,
        "parser_kwargs": _parser_kwargs(argv, default_config),
        # A run named by the environment (a requeued SLURM job, a sweep's trial) goes on in its own folder,
        # where its config.yaml already is.
        "save_config_kwargs": {"overwrite": run_name() is not None},
        # The model owns its optimizer (configure_optimizers); LightningCLI's own `--optimizer` would
        # silently override it, so it is switched off.
        "auto_configure_optimizers": False,
    }


def _parser_kwargs(argv: list[str], default_config: Path | str | None) -> dict[str, Any]:
    """The parsers' settings: errors raised rather than printed with the usage text (they become a SettingError);
    every flag spelt in full (argparse would take ``--trainer.max_epoch`` for ``max_epochs``: a command that a new
    setting of the same prefix would make ambiguous, or change); the default config where the command names no
    class of its own."""
    subcommands = LightningCLI.subcommands()
    kwargs: dict[str, Any] = {name: {"exit_on_error": False, "allow_abbrev": False} for name in subcommands}
    kwargs.update(exit_on_error=False, allow_abbrev=False)
    if default_config is not None and not names_a_class(argv):
        for name in subcommands:
            kwargs[name]["default_config_files"] = [str(default_config)]
    return kwargs


def main(args: Sequence[str] | None = None, default_config: Path | str | None = DEFAULT_CONFIG) -> LitCLI:
    """The command line's entry point: :func:`run`, with a typed error said in one line on stderr and turned into
    the process's exit status (2 for settings, 1 for a diverged run, 128 + the signal's number when interrupted, 0 with
    a line on stdout for a run already done)."""
    try:
        return run(args, default_config)
    except RunError as error:
        raise SystemExit(exit_status(error)) from None


def exit_status(error: RunError | ArgumentError) -> int:
    """Say why a command stopped in one line (stderr; stdout when it is no error), from one process under DDP, and
    return the process's exit status: what every script's entry point does with a typed error (``train.py``,
    ``sweep.py``, ``check.py``). A jsonargparse ``ArgumentError`` (a script's own flags) is a setting's error."""
    if isinstance(error, ArgumentError):
        error = SettingError(compat.parse_error_line(str(error)))
    _tell(error.line, error.exit_code != 0)  # under DDP every process stops, one says why
    return error.exit_code


@rank_zero_only
def _tell(message: str, error: bool = True) -> None:
    with contextlib.suppress(OSError):  # a terminal that hung up (SIGHUP): nobody is there to read it
        print(message, file=sys.stderr if error else sys.stdout, flush=True)
