"""Every place the run layer relies on something Lightning or jsonargparse does not promise: a private attribute, an
internal class, the text of a message. Each comes with the reason, and a test in ``tests/run/test_compat.py`` that
fails when an upgrade changes it: an upgrade breaks a test, not a user's run.
"""

from __future__ import annotations

import ctypes
import functools
import inspect
import logging
import os
import re
import textwrap
import warnings
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _Stateful as Stateful
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection, _ResultMetric

__all__ = [
    "LeanResults",
    "LitTrainer",
    "Stateful",
    "Tqdm",
    "checkpoint_model_settings",
    "checkpoint_schedule",
    "cuda_check_without_nvml",
    "forget_train_loader",
    "innermost",
    "parse_error_line",
    "quiet_irrelevant_messages",
]

# -- Lightning's privates ------------------------------------------------------------------------------------------


def forget_train_loader(trainer: L.Trainer) -> bool:
    """Drop the training loader the fit loop has already set up, so that it sets it up again; ``True`` if it had one.

    Why: ``trainer.estimated_stepping_batches`` (the usual way to size OneCycleLR in ``configure_optimizers``)
    sets up the training loader and starts iterating it *before* Lightning restores the checkpoint's loop state,
    and the fit loop then reuses that loader: the position the checkpoint saved for it is never loaded, and with
    persistent workers the first resumed epoch replays the order of epoch 0. Called after ``configure_optimizers``
    and before the restore (``on_fit_start``), this makes the fit loop request the loader again once the state
    is there to load. Its workers are shut down by Lightning's own teardown of the fetcher. (Also called when a run
    fails: Lightning tears down only the loop that was running, which in the sanity check is not this one.)
    """
    loop = trainer.fit_loop
    if loop._combined_loader is None:
        return False
    if loop._data_fetcher is not None:
        loop._data_fetcher.teardown()
        loop._data_fetcher = None
    loop._combined_loader = None
    return True


def checkpoint_schedule(callback: ModelCheckpoint) -> tuple[int, object | None]:
    """``ModelCheckpoint``'s ``every_n_train_steps`` and ``train_time_interval`` as it decided them.

    Why: its hook after every training step works out at some length whether to save; a callback that knows the
    step is no multiple of the one and there is no other returns at once. The values are read, not copied from
    the arguments, so that they stay whatever ``ModelCheckpoint`` makes of its arguments.
    """
    return callback._every_n_train_steps, callback._train_time_interval


def checkpoint_model_settings(subcommand: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The model settings of ``checkpoint`` as LightningCLI merges them into a command's config (``{subcommand:
    {"model": ...}}``, for ``parser.parse_object``); nothing to merge when it records none.

    Why: LightningCLI reads ``--ckpt_path`` a second time for them (its ``_parse_ckpt_path``, right after
    ``parse_arguments``), with no size check and after ours; the command line merges them itself from the checkpoint
    it read and checked (``LitCLI.parse_arguments``). This is LightningCLI's own rule, and the test compares the two.
    """
    hparams = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k != "_instantiator"}
    if "_class_path" in hparams:
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    return {subcommand: {"model": hparams}} if hparams else {}


# -- message texts and jsonargparse's error structure ---------------------------------------------------------------


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
        # litpoly.cli.run(args) is how a sweep or a check runs commands in its own process, on purpose; the warning
        # would quote that process's own arguments (a storage URL with its password) into every trial's log.
        r"LightningCLI's args parameter is intended to run from within Python",
    ):
        warnings.filterwarnings("ignore", message=message)
    # addFilter ignores a filter it already has, so calling this again (tests do) adds nothing.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_advertising)
    logging.getLogger("lightning.fabric.utilities.seed").addFilter(_not_seed_line)
    # Lightning's own note on a SIGTERM: the command line says in one line what the signal stopped.
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").addFilter(_not_sigterm_note)


def _not_advertising(record: logging.LogRecord) -> bool:
    """Drop Lightning's tips for its cloud services, and its list of accelerators (``GPU available: …``):
    the run folder line says what the run uses, once it has started, so a run refused during setup prints
    its one error line alone."""
    return not record.getMessage().startswith(("💡 Tip", "GPU available:", "TPU available:", "HPU available:"))


def _not_sigterm_note(record: logging.LogRecord) -> bool:
    return "Received SIGTERM" not in record.getMessage()


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
    linked = re.match(r"argument (\S+) --> (\S+): ", message)
    if linked is not None:  # a setting another one sets (`link_arguments`), given itself
        source, target = linked.groups()
        return f"`{target}` is set by `{source}`: give --{source} instead"
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


def innermost(error: BaseException, kind: type[BaseException]) -> BaseException:
    """The first ``kind`` of exception in ``error``'s chain: jsonargparse wraps a class's own ``ValueError``
    (raised in its ``__init__``, naming the setting) in one about the union of types a class path may take."""
    found = error
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, kind):
            found = cause
        cause = cause.__cause__ or cause.__context__
    return found


class _LeanResultMetric(_ResultMetric):
    """Lightning's store of one logged value, moved to a device only when it is not already there."""

    def to(self, *args: Any, **kwargs: Any) -> _ResultMetric:  # type: ignore[override]  # Lightning's own override
        if not kwargs and len(args) == 1 and isinstance(args[0], torch.device) and _all_on(self.__dict__, args[0]):
            return self
        return super().to(*args, **kwargs)


def _all_on(attributes: dict[str, Any], device: torch.device) -> bool:
    """Whether every tensor among ``attributes`` (and in the dicts, lists and tuples among them) is on ``device``;
    ``False`` for a module among them (a logged torchmetrics object), which Lightning's own move handles."""
    for value in attributes.values():
        inner = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else (value,)
        for item in inner:
            if isinstance(item, torch.nn.Module) or (isinstance(item, torch.Tensor) and item.device != device):
                return False
    return True


class LeanResults(_ResultCollection):
    """Lightning's collection of what ``self.log`` is given, without its copy of every logged value's state at
    every call.

    Why: ``_ResultCollection.log`` moves the value's store to the value's device on every call, and that move
    rebuilds the store's attributes one by one (its metadata deep-copied), whether or not anything is elsewhere:
    in a small step, that is the largest single cost of the step. A store whose tensors are all on the device
    already is left as it is; any other move is Lightning's. Installed on the loops of :class:`LitTrainer`.
    """

    def __setitem__(self, key: str, metric: Any) -> None:
        if type(metric) is _ResultMetric:
            metric.__class__ = _LeanResultMetric
        super().__setitem__(key, metric)


# -- what Lightning sets for the whole process ---------------------------------------------------------------------

#: Set to "1" by ``import lightning``: torch then asks NVML, not the CUDA runtime, whether a GPU is there.
NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def cuda_check_without_nvml() -> bool:
    """Let ``torch.cuda.is_available()`` ask the CUDA runtime at once where NVML cannot be loaded; ``True`` if it did.

    Why: Lightning sets :data:`NVML_CHECK` on import, so that looking for a GPU does not initialise CUDA in a
    process that later forks (DataLoader workers). Torch then answers ``is_available()`` by loading NVML's library
    on every call, and where it cannot be loaded (a CUDA build of torch on a machine without NVIDIA's driver: what
    pip installs on a CPU-only Linux machine) it falls back to the very runtime call it makes without the variable.
    Adam, AdamW and RMSprop ask on every ``step()``, so every step on such a machine pays a failed library search
    for an answer that cannot change. There, the variable changes nothing but that cost, and is unset; where NVML
    loads (a GPU machine), or torch has no CUDA, nothing changes.
    """
    if os.environ.get(NVML_CHECK) != "1" or not torch.version.cuda or torch.version.hip:
        return False
    try:
        ctypes.CDLL("libnvidia-ml.so.1")  # the name torch loads (torch.cuda._raw_device_count_nvml)
    except OSError:
        del os.environ[NVML_CHECK]
        return True
    return False


# -- help text ----------------------------------------------------------------------------------------------------


def _summarized(method: Any, summary: str) -> Any:
    """``method`` with ``summary`` as its docstring's first line, which LightningCLI shows as the subcommand's help.
    (Lightning's own first lines are cut mid-sentence where its docstrings wrap.)"""

    @functools.wraps(method)
    def wrapper(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs)

    wrapper.__doc__ = f"{summary}\n\n{inspect.getdoc(method) or ''}"
    return wrapper


class LitTrainer(Trainer):
    """Lightning's Trainer, its subcommands described in whole sentences in ``train.py --help``, its loops
    collecting logged values in :class:`LeanResults`, in a process that asks for a GPU without NVML where NVML is
    missing (:func:`cuda_check_without_nvml`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cuda_check_without_nvml()
        super().__init__(*args, **kwargs)
        for loop in (self.fit_loop.epoch_loop, self.fit_loop.epoch_loop.val_loop, self.validate_loop, self.test_loop):
            results = getattr(loop, "_results", None)
            if type(results) is _ResultCollection:  # else Lightning's own (test_compat.py fails, the run goes on)
                loop._results = LeanResults(training=results.training)

    fit = _summarized(Trainer.fit, "Train the model, validating it as the config says.")
    validate = _summarized(Trainer.validate, "Evaluate a checkpoint on the validation data.")
    test = _summarized(Trainer.test, "Evaluate a checkpoint on the test data.")
    predict = _summarized(Trainer.predict, "Write a checkpoint's predictions to predictions.csv in the run folder.")
