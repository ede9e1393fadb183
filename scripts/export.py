"""Export a trained model as ONNX and as a ``torch.export`` program, into its run folder.

    python scripts/export.py --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python scripts/export.py --ckpt_path best                 # the newest run's best.ckpt (`last`: its last.ckpt)
    python scripts/export.py --ckpt_path best --config configs/myproject.yaml   # the classes your config names
    python scripts/export.py --ckpt_path last --model mypackage.MyModel --data mypackage.MyData --out /tmp/model

The model's and the data module's classes are ``--model``'s and ``--data``'s, else those of the training config
``--config`` (the file ``train.py fit --config`` was given), else the default config's; the checkpoint must hold
that model, and the run's ``config.yaml`` give that data module's settings (their own records
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
from jsonargparse import ArgumentError, ArgumentParser

from litpoly import safe_yaml
from litpoly.cli import DEFAULT_CONFIG, exit_status
from litpoly.console import one_line
from litpoly.export import export
from litpoly.runs import find_checkpoint


def config_class(key: str, config: Path | None) -> str:
    """The class a training config names for ``key`` (``model``, ``data``): ``config``'s, else the default config's
    (as ``train.py`` does, a config that names no class of its own runs the default's)."""
    for path in (config, DEFAULT_CONFIG):
        if path is None:
            continue
        try:
            settings = safe_yaml.load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"`config` {path} cannot be read: {one_line(error)}") from None
        value = settings.get(key) if isinstance(settings, dict) else None
        if isinstance(value, dict):
            value = value.get("class_path")
        if value is not None:
            return str(value)
    raise ValueError(f"`{key}`: no class given, and neither the config nor the default config names one")


def main(ckpt_path: str, model: str | None = None, data: str | None = None, config: Path | None = None,
         out: Path | None = None, onnx: bool = True, program: bool = True) -> None:  # fmt: skip
    """Export the model of a checkpoint.

    Args:
        ckpt_path: A checkpoint file, or ``last`` / ``best`` for the newest run's (as ``scripts/train.py`` finds them).
        model: The model's class, as its config names it (default: ``config``'s).
        data: The data module's class, as its config names it (default: ``config``'s): the files are checked on its
            validation inputs, made with the run's settings.
        config: The training config that names the model's and the data module's classes (what
            ``train.py fit --config`` was given; default: the default config). Only its classes are read.
        out: The folder to write into. Default: ``export/`` in the checkpoint's run folder.
        onnx: Write ``model.onnx``.
        program: Write ``model.pt2`` (``torch.export``).
    """
    warnings.filterwarnings("ignore")  # the exporters' notes on what they traced; the result is checked below
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # and the operators of packages not installed
    try:
        path, _ = find_checkpoint(ckpt_path, Path.cwd() / "lightning_logs")
        folder = out or path.parent.parent / "export"
        written = export(path, model or config_class("model", config), folder, onnx=onnx, program=program,
                         data=data or config_class("data", config))  # fmt: skip
    except ValueError as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    for file, diff in ((written.onnx, written.onnx_max_diff), (written.program, written.program_max_diff)):
        if file is not None:
            print(f"Wrote {file} (largest difference from the model's own output on {written.checked_on}: {diff:.2g})")


if __name__ == "__main__":
    # A parser of main's own arguments, rather than auto_cli's: auto_cli would take `--config` for a file of
    # export.py's own flags (and drop a parameter of that name), where users give the training config.
    parser = ArgumentParser(description=(main.__doc__ or "").splitlines()[0], exit_on_error=False, allow_abbrev=False)
    parser.add_function_arguments(main)
    try:
        main(**parser.parse_args().as_dict())
    except ArgumentError as error:  # an unknown flag, a value of the wrong type: one line, as train.py's
        raise SystemExit(exit_status(error)) from None
