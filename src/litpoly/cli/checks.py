"""``--ckpt_path`` against the settings a command gives: the same model class, and weights that fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser, Namespace
from lightning.pytorch import LightningModule

from litpoly.console import say
from litpoly.errors import CheckpointError


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
