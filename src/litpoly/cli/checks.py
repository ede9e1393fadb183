"""Checks on a command's settings that LightningCLI's types cannot make: a schedule that trains something, and
``--ckpt_path`` against the settings a command gives (the same model class, weights that fit, a run not yet done)."""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningModule

from litpoly.console import say
from litpoly.errors import CheckpointError, SettingError
from litpoly.runs import LOGS


def _class_path(value: Any) -> str | None:
    return value.get("class_path") if isinstance(value, Namespace | dict) else None


def check_against_checkpoint(config: Namespace, checkpoint: dict[str, Any], given: set[str], path: Path) -> None:
    """Compare the model settings a command gives with those of the checkpoint it loads.

    LightningCLI builds the model from the checkpoint's own settings (its ``hyper_parameters``), whatever the
    command line says. So a setting given that differs is not used: where the weights could not fit the model
    it would make, that is an error (one line naming it); otherwise a warning says it is ignored.

    Raises:
        CheckpointError: The checkpoint holds another model class, or weights that do not fit the model the
            given settings make.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    model = config.model
    configured = _class_path(model)
    saved = hparams.get("_class_path")
    if saved and configured and saved != configured:
        raise CheckpointError(
            f"`ckpt_path` {path} holds a {saved}, but this run's model is {configured}: give the settings the "
            "checkpoint was trained with (its run's --config)"
        )
    if configured:
        check_settings_fit(configured, hparams, path)
    init_args = model.get("init_args", {}) if configured else model
    differ = sorted(k for k in given if k in hparams and k in init_args and init_args[k] != hparams[k])
    if not differ:
        return
    mismatch = _weights_mismatch(model, checkpoint.get("state_dict", {}))
    settings = ", ".join(f"`model.{k}` {init_args[k]!r}" for k in differ)
    if mismatch is not None:
        raise CheckpointError(
            f"`ckpt_path` {path} holds weights that do not fit the model {settings} makes ({mismatch}); leave "
            f"{'it' if len(differ) == 1 else 'them'} out to use the checkpoint's"
        )
    for k in differ:
        say(
            f"Warning: `model.{k}` {init_args[k]!r} is not used: the checkpoint's model was made with "
            f"{hparams[k]!r}, and LightningCLI restores the model's settings with its weights.",
            stderr=True,
        )


def check_settings_fit(class_path: str, hparams: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose model settings (``hyper_parameters``) the model class ``class_path`` no longer takes:
    it was saved by another version of the model's code. (A setting the checkpoint lacks is fine: the class's
    default, or the command's, fills it in.) ``class_path`` is the one the command's config names, imported as
    parsing it did; the checkpoint's own record of its class is never imported.

    Raises:
        CheckpointError: Naming the settings the class does not take.
    """
    module, _, name = class_path.rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return  # the command's own class path: parsing it has already said what is wrong
    parameters = inspect.signature(model_class.__init__).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return  # it takes any setting
    accepted = {p.name for p in parameters}
    extra = sorted(k for k in hparams if not k.startswith("_") and k not in accepted)
    if extra:
        raise CheckpointError(
            f"`ckpt_path` {path} was saved by another version of {class_path}: this one takes no "
            f"{', '.join(f'`{k}`' for k in extra)}: use the code it was trained with"
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


def check_trains_something(trainer: Namespace) -> None:
    """Refuse a ``fit`` whose schedule trains no step: Lightning would print that it stopped and save the untrained
    model as ``last.ckpt``, as if it were a result.

    Raises:
        SettingError: ``--trainer.max_steps 0``, ``--trainer.max_epochs 0`` or ``--trainer.limit_train_batches 0``.
    """
    for key, allowed in (
        ("max_steps", "a positive number of steps, or -1 for no limit (max_epochs then decides)"),
        ("max_epochs", "a positive number of epochs, or -1 for no limit"),
        ("limit_train_batches", "a positive number of batches, or a fraction of the epoch above 0.0"),
    ):
        if trainer.get(key) == 0:
            raise SettingError(f"`trainer.{key}` {trainer.get(key)} trains nothing: give {allowed}")


def check_writable(root: str) -> None:
    """Refuse a run folder's root (``--trainer.default_root_dir``, or the working folder) that cannot be written,
    before anything is made: otherwise Lightning fails with a traceback when its logger first makes a folder.

    Raises:
        SettingError: Naming the folder, and why.
    """
    if "://" in root:  # remote storage: its library says what is wrong
        return
    existing = Path(root, LOGS)
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    where = "`trainer.default_root_dir`" if Path(root).resolve() != Path.cwd().resolve() else "the working folder"
    if not existing.is_dir():
        raise SettingError(f"{where} {root}: {existing} is not a folder: give a folder to write the runs into")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SettingError(f"{where} {root}: {existing} is not writable: give a folder this user can write")
