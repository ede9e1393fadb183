"""Export a trained model for deployment: ONNX (for onnxruntime and friends) and ``torch.export`` (a ``.pt2``
program that loads without the model's Python code), for any LightningModule this command line trained.

The model is rebuilt from the checkpoint alone — its class and settings are in it (LightningCLI records them) —
in the dtype it was trained in, and traced on its ``example_input_array`` (Lightning's own attribute for an
input of the right shape), with the first dimension left free: any batch size works.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from litpoly.cli.checks import check_settings_fit
from litpoly.runs import read_checkpoint


@dataclass(frozen=True)
class Exported:
    """What :func:`export` wrote, and how far each file's output is from the model's own on the example input."""

    onnx: Path | None
    program: Path | None
    onnx_max_diff: float | None
    program_max_diff: float | None


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


def export(ckpt_path: Path, class_path: str, out: Path, onnx: bool = True, program: bool = True) -> Exported:
    """Write ``out/model.onnx`` and ``out/model.pt2`` for the model in ``ckpt_path``, a ``class_path``.

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
    with torch.no_grad():
        expected = model(example)
    onnx_path = program_path = None
    onnx_diff = program_diff = None
    if program:
        program_path = out / "model.pt2"
        exported = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(exported, program_path)
        program_diff = float((torch.export.load(program_path).module()(example) - expected).abs().max())
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
        onnx_diff = _onnx_max_diff(onnx_path, example, expected)
    return Exported(onnx_path, program_path, onnx_diff, program_diff)


def _onnx_max_diff(path: Path, example: torch.Tensor, expected: torch.Tensor) -> float:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": example.numpy()})
    return float(abs(output - expected.numpy()).max())
