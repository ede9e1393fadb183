"""Export a trained model as ONNX and as a ``torch.export`` program, into its run folder.

    python scripts/export.py --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python scripts/export.py --ckpt_path best                 # the newest run's best.ckpt (`last`: its last.ckpt)
    python scripts/export.py --ckpt_path last --model mypackage.MyModel --out /tmp/model

The model's class is the default config's, or ``--model``'s; the checkpoint must hold one of those (its own record
of its class is compared, never imported: loading a file must not run code it names).

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


def default_model() -> str:
    """The model class the default config names."""
    model = yaml.safe_load(DEFAULT_CONFIG.read_text())["model"]
    return str(model["class_path"] if isinstance(model, dict) else model)


def main(ckpt_path: str, model: str | None = None, out: Path | None = None, onnx: bool = True,
         program: bool = True) -> None:  # fmt: skip
    """Export the model of a checkpoint.

    Args:
        ckpt_path: A checkpoint file, or ``last`` / ``best`` for the newest run's (as ``scripts/train.py`` finds them).
        model: The model's class, as its config names it (default: the default config's).
        out: The folder to write into. Default: ``export/`` in the checkpoint's run folder.
        onnx: Write ``model.onnx``.
        program: Write ``model.pt2`` (``torch.export``).
    """
    warnings.filterwarnings("ignore")  # the exporters' notes on what they traced; the result is checked below
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # and the operators of packages not installed
    try:
        path, _ = find_checkpoint(ckpt_path, Path.cwd() / "lightning_logs")
        folder = out or path.parent.parent / "export"
        written = export(path, model or default_model(), folder, onnx=onnx, program=program)
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    for file, diff in ((written.onnx, written.onnx_max_diff), (written.program, written.program_max_diff)):
        if file is not None:
            print(f"Wrote {file} (largest difference from the model's own output on {written.checked_on}: {diff:.2g})")


if __name__ == "__main__":
    auto_cli(main, as_positional=False)
