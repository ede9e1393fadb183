"""Export a trained model as ONNX and as a ``torch.export`` program, into its run folder.

    python scripts/export.py --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python scripts/export.py --ckpt_path best                 # the newest run's best.ckpt (`last`: its last.ckpt)
    python scripts/export.py --ckpt_path last --model mypackage.MyModel --data mypackage.MyData --out /tmp/model

The model's and the data module's classes are the default config's, or ``--model``'s and ``--data``'s; the
checkpoint must hold that model, and the run's ``config.yaml`` give that data module's settings (their own records
of the classes are compared, never imported: loading a file must not run code it names).

Writes ``model.onnx`` (onnxruntime, TensorRT, …) and ``model.pt2`` (``torch.export.load``; no model code needed)
into ``export/`` beside the checkpoint's run folder, and prints how far each one's output is from the model's own
on real inputs (the run's validation data), or on its example input where the run's data gives none. ONNX needs
the export extra: ``pip install -e '.[export]'`` (the dev extra includes it).
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import yaml
from jsonargparse import auto_cli

from litpoly.cli import DEFAULT_CONFIG
from litpoly.export import export
from litpoly.runs import find_checkpoint


def default_class(key: str) -> str:
    """The class the default config names for ``key`` (``model``, ``data``)."""
    value = yaml.safe_load(DEFAULT_CONFIG.read_text())[key]
    return str(value["class_path"] if isinstance(value, dict) else value)


def main(ckpt_path: str, model: str | None = None, data: str | None = None, out: Path | None = None,
         onnx: bool = True, program: bool = True) -> None:  # fmt: skip
    """Export the model of a checkpoint.

    Args:
        ckpt_path: A checkpoint file, or ``last`` / ``best`` for the newest run's (as ``scripts/train.py`` finds them).
        model: The model's class, as its config names it (default: the default config's).
        data: The data module's class, as its config names it (default: the default config's): the files are
            checked on its validation inputs, made with the run's settings.
        out: The folder to write into. Default: ``export/`` in the checkpoint's run folder.
        onnx: Write ``model.onnx``.
        program: Write ``model.pt2`` (``torch.export``).
    """
    warnings.filterwarnings("ignore")  # the exporters' notes on what they traced; the result is checked below
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # and the operators of packages not installed
    try:
        path, _ = find_checkpoint(ckpt_path, Path.cwd() / "lightning_logs")
        folder = out or path.parent.parent / "export"
        written = export(path, model or default_class("model"), folder, onnx=onnx, program=program,
                         data=data or default_class("data"))  # fmt: skip
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    for file, diff in ((written.onnx, written.onnx_max_diff), (written.program, written.program_max_diff)):
        if file is not None:
            print(f"Wrote {file} (largest difference from the model's own output on {written.checked_on}: {diff:.2g})")


if __name__ == "__main__":
    auto_cli(main, as_positional=False)
