"""Export a trained model for deployment: ONNX (for onnxruntime and friends) and ``torch.export`` (a ``.pt2``
program that loads without the model's Python code), for any LightningModule this command line trained.

The model is rebuilt from the checkpoint alone — its class and settings are in it (LightningCLI records them) —
in the dtype it was trained in, and traced on its ``example_input_array`` (Lightning's own attribute for an
input of the right shape), with the first dimension left free: any batch size works. Each file is then checked
against the model's own output on real inputs: the first validation batch of the run's data module, where the
command names its class (its settings come from the run's ``config.yaml``); else on the example input, which for
a typical model is zeros. Only the classes the command names are imported: a file never names code that runs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from jsonargparse import ArgumentParser

from litpoly import compat, safe_yaml
from litpoly.checkpoint_file import read_checkpoint
from litpoly.cli.checks import check_settings_fit


@dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote, and how far each file's output is from the model's own on ``checked_on``."""

    onnx: Path | None
    program: Path | None
    onnx_max_diff: float | None
    program_max_diff: float | None
    checked_on: str  #: the inputs the differences are measured on, in words


def load_trained(ckpt_path: Path, class_path: str) -> L.LightningModule:
    """The model of a checkpoint written by this command line, in evaluation mode, in its weights' dtype.

    ``class_path`` is the model class the user's config names: its module is imported (the checkpoint's own
    record of its class is only compared with it, never imported: loading a file must not run code it names).

    Raises:
        ValueError: One line, when the checkpoint cannot be read, or holds another class than ``class_path``.
    """
    checkpoint = read_checkpoint(ckpt_path)
    saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    if saved != class_path:
        holds = f"a {saved}" if saved else "no record of its class (it was not written by scripts/train.py)"
        raise ValueError(f"`ckpt_path` {ckpt_path} holds {holds}, not a {class_path}: give its class with --model")
    module, _, name = class_path.rpartition(".")
    try:
        model_class = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"`model` {class_path} cannot be imported: {error}") from None
    check_settings_fit(class_path, checkpoint.get("hyper_parameters") or {}, ckpt_path)  # as train.py does
    model: L.LightningModule = model_class.load_from_checkpoint(ckpt_path, map_location="cpu", weights_only=True)
    weights = [v for v in checkpoint["state_dict"].values() if torch.is_tensor(v) and v.is_floating_point()]
    if weights and weights[0].dtype != torch.float32:  # load again, into weights of the dtype it was trained in
        model = model.to(weights[0].dtype)
        model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def export(
    ckpt_path: Path, class_path: str, out: Path, onnx: bool = True, program: bool = True, data: str | None = None
) -> Exported:
    """Write ``out/model.onnx`` and ``out/model.pt2`` for the model in ``ckpt_path``, a ``class_path``; check them on
    the validation inputs of the run's data module when ``data`` names its class (see :func:`held_out_inputs`).

    Raises:
        ValueError: One line: an unreadable checkpoint, a model without ``example_input_array``, a folder that
            cannot be written, or ONNX asked for without the ``export`` extra installed.
    """
    model = load_trained(ckpt_path, class_path)
    example = model.example_input_array
    if not isinstance(example, torch.Tensor):
        raise ValueError(
            f"Expected the model ({type(model).__qualname__}) to set `self.example_input_array` to an input tensor "
            "in its __init__: Lightning's attribute, which export traces the model on"
        )
    example = example.to(next(model.parameters()).dtype)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".write-test").touch()
        (out / ".write-test").unlink()
    except OSError as error:
        raise ValueError(f"`out` {out} cannot be written: {error.strerror or error}") from None
    batch = torch.export.Dim("batch")
    inputs, checked_on = held_out_inputs(ckpt_path, data) if data is not None else (None, "its example input")
    inputs = example if inputs is None else inputs.to(example.dtype)
    with torch.no_grad():
        expected = model(inputs)
    onnx_path = program_path = None
    onnx_diff = program_diff = None
    if program:
        program_path = out / "model.pt2"
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(exported, program_path)
        program_diff = float((torch.export.load(program_path).module()(inputs) - expected).abs().max())
    if onnx:
        try:
            import onnxruntime  # noqa: F401  # the export extra (onnx, onnxscript, onnxruntime)
            import onnxscript  # noqa: F401
        except ImportError:
            raise ValueError("ONNX export needs the export extra: pip install -e '.[export]'") from None
        onnx_path = out / "model.onnx"
        model.to_onnx(
            onnx_path, example, input_names=["input"], output_names=["output"], dynamic_shapes=({0: batch},),
            dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
        onnx_diff = _onnx_max_diff(onnx_path, inputs, expected)
    return Exported(onnx_path, program_path, onnx_diff, program_diff, checked_on)


def held_out_inputs(ckpt_path: Path, data_class: str, limit: int = 256) -> tuple[torch.Tensor | None, str]:
    """Up to ``limit`` inputs of the first validation batch of the run that wrote ``ckpt_path``, and what they are in
    words; ``None`` and why not, when the run's data gives none (no config beside the checkpoint, another data
    module than ``data_class``, no validation data, a batch that is not inputs first).

    The data module is a ``data_class`` (the class the command names, imported as ``train.py`` imports it), made on
    the CPU with the settings of the run's ``config.yaml``; that file's own record of the class is only compared with
    it, never imported."""
    config_path = ckpt_path.parent.parent / "config.yaml"
    try:
        config = safe_yaml.load(config_path.read_text())
        data = config.get("data") if isinstance(config, dict) else None
        recorded = data.get("class_path") if isinstance(data, dict) else None
        if recorded != data_class:
            return None, f"its example input (the run's config names the data module {recorded}, not {data_class})"
        module, _, name = data_class.rpartition(".")
        parser = ArgumentParser(exit_on_error=False)
        parser.add_subclass_arguments(getattr(importlib.import_module(module), name), "data")
        datamodule = parser.instantiate_classes(parser.parse_object({"data": data})).data
        # Data modules that put their data on the Trainer's device ask it for that device and its precision.
        compat.quiet_irrelevant_messages()  # the Trainer's list of accelerators: no run starts here
        datamodule.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                       enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
        datamodule.prepare_data()
        datamodule.setup("validate")
        batch = next(iter(datamodule.val_dataloader()))
    except Exception as error:  # any failure to read the data: the check falls back, and says why
        return None, f"its example input (the run's validation data could not be read: {type(error).__name__})"
    inputs = batch[0] if isinstance(batch, tuple | list) else batch
    if not isinstance(inputs, torch.Tensor):
        return None, "its example input (the run's validation batches do not start with an input tensor)"
    inputs = inputs[:limit].cpu()
    return inputs, f"{len(inputs)} inputs of the run's validation data"


def _onnx_max_diff(path: Path, example: torch.Tensor, expected: torch.Tensor) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": example.numpy()})
    return float(abs(output - expected.numpy()).max())
