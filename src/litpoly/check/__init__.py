"""The proof, for any project: measure on the user's own model and data each property the template promises.

    python scripts/check.py                                          # the project's default config
    python scripts/check.py --config my_config.yaml                  # any config train.py takes, and its flags
    python scripts/check.py --config my_config.yaml --only determinism,resume --epochs 3

Short runs of the user's config (its flags as ``train.py fit`` takes them) measure:

- **determinism**: two runs with the same seed end with the same weights, bit for bit;
- **resume**: a run stopped by Ctrl-C mid-epoch, and one stopped at the end of an epoch, resumed with
  ``--ckpt_path``, end where the uninterrupted run ends: weights, optimizer and learning-rate schedule, bit for bit;
- **ddp**: 2 processes on the CPU, each with batch B, end where 1 process with batch 2·B ends (float64);
- **gradients**: autograd's gradient of the training loss agrees with central differences (float64);
- **learning**: the model's own optimizer at least halves the loss on one batch it trains on alone;
- **checkpoint**: ``last.ckpt``, read weights-only into a new model, predicts what the trained model predicts;
- **export**: the ONNX and ``torch.export`` files compute what the model computes (with ``example_input_array``).

It prints a table — property, PASS/FAIL/SKIP, the measured figure, its tolerance — writes it to
``lightning_logs/check_N/report.txt`` and ``report.json``, and exits with status 1 if any property fails. The runs
themselves go in a temporary folder, removed at the end. A config the check cannot run ends with one line,
``error: …``, exit status 2, and nothing written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import torch
import yaml

from litpoly.check import properties
from litpoly.check.properties import Reference
from litpoly.check.report import Row, one_line, report_folder, summary, table, write_report
from litpoly.check.runs import CheckError, Runner, Watch, last_checkpoint
from litpoly.cli import exit_status, run
from litpoly.console import output_to, without_password
from litpoly.errors import RunError

#: The properties, in the order the table shows them, and what each one compares.
SAID = {
    "determinism": "two runs with the same seed: the same weights, bit for bit",
    "resume": "runs stopped by Ctrl-C mid-epoch and at an epoch's end, resumed with --ckpt_path: the uninterrupted "
    "run's weights, optimizer and LR-scheduler state, bit for bit",
    "ddp": f"2 CPU processes of batch B against 1 of batch 2·B, in float64: the same weights within "
    f"{properties.DDP_TOLERANCE:g} of the largest",
    "gradients": f"autograd against central differences, in float64: within {properties.GRADIENT_TOLERANCE:g} of the "
    "gradient's norm",
    "learning": f"the model's own optimizer on one batch: the loss down to less than {properties.LEARNING_RATIO:g} "
    "of where it started",
    "checkpoint": "last.ckpt read weights-only into a new model: the same predictions, bit for bit",
    "export": "ONNX and torch.export files on example_input_array: the model's outputs, within rounding",
}
PROPERTIES = tuple(SAID)
#: The order they are measured in: those that change the reference run's model in place (learning, then gradients:
#: float64) after those that read it.
ORDER = ("determinism", "resume", "ddp", "checkpoint", "export", "learning", "gradients")
#: The properties measured on the reference run's model, in this process, rather than by runs of their own.
IN_THIS_PROCESS = ("checkpoint", "learning", "gradients")
#: The short runs' length when neither ``--steps`` nor ``--epochs`` is given, in the unit the config counts in.
DEFAULT_STEPS, DEFAULT_EPOCHS = 20, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, as train.py's errors, not argparse's usage block
        raise CheckError(message)


def parser() -> argparse.ArgumentParser:
    """The check's own flags; every other flag is a ``train.py fit`` flag, passed on to every run."""
    width = max(map(len, PROPERTIES)) + 4
    listed = [textwrap.fill(said, 100, initial_indent=f"  {name}".ljust(width), subsequent_indent=" " * width)
              for name, said in SAID.items()]  # fmt: skip
    parse = _Parser(
        prog="check.py",
        usage="%(prog)s [--only P,...] [--steps N | --epochs N] [--overfit_steps N] [train.py fit flags ...]",
        description=textwrap.fill(
            "Measure, on your own model and data, each property the template promises. Prints a table — property, "
            "PASS/FAIL/SKIP, the figure measured, its tolerance — and writes it to lightning_logs/check_N/report.txt "
            "and report.json. Exit status 0 when every property passes (or is skipped, with the reason), 1 when one "
            "fails, 2 when the check cannot run.", 100),
        epilog="properties:\n" + "\n".join(listed) + "\n\n" + textwrap.fill(
            "Every other flag goes to `train.py fit`, e.g. --config my_config.yaml --model.hidden 32 (see `python "
            "scripts/train.py fit --help`); the runs' length is --steps or --epochs, whatever the config says.", 100),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )  # fmt: skip
    parse.add_argument("--only", metavar="P,...", default=",".join(PROPERTIES), type=_properties,
                       help="the properties to check, comma-separated (default: all)")  # fmt: skip
    length = parse.add_mutually_exclusive_group()
    length.add_argument("--steps", metavar="N", type=_positive, help=f"runs of N optimizer steps (default: "
                        f"{DEFAULT_STEPS}, when the config counts steps)")  # fmt: skip
    length.add_argument("--epochs", metavar="N", type=_positive, help=f"runs of N epochs (default: {DEFAULT_EPOCHS}, "
                        "when the config counts epochs)")  # fmt: skip
    parse.add_argument("--overfit_steps", metavar="N", type=_positive, default=100,
                       help="optimizer steps on one batch for `learning` (default: 100)")  # fmt: skip
    return parse


def _properties(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in PROPERTIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(PROPERTIES)}, got {value!r}")
    return names


def _positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return int(value)


def train_flags(args: list[str]) -> list[str]:
    """The ``train.py`` flags the check passes on: ``fit``'s (a leading ``fit`` is dropped).

    Raises:
        CheckError: Another subcommand, or a flag the check sets itself.
    """
    if args and args[0] == "fit":
        args = args[1:]
    if args and not args[0].startswith("-"):
        raise CheckError(f"the check runs `fit`; got the subcommand {args[0]!r}")
    for flag in ("--ckpt_path", "--print_config"):
        if any(arg == flag or arg.startswith(flag + "=") for arg in args):
            raise CheckError(f"{flag} is not for the check: it starts and resumes its own runs")
    return args


def parsed_config(args: list[str], default_config: Path | None) -> dict[str, Any]:
    """The run's settings as ``train.py fit`` parses them (its ``--print_config``), without running anything.

    Raises:
        SettingError: The settings are refused (the parser's own line).
        CheckError: Nothing printed that reads as a config.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            run(["fit", *args, "--print_config"], default_config)
        except SystemExit as exit_:  # jsonargparse's end of --print_config, once printed
            if exit_.code:
                raise CheckError(f"train.py fit --print_config ended with exit status {exit_.code}") from None
    config = yaml.safe_load(out.getvalue())
    if not isinstance(config, dict):
        raise CheckError("train.py printed no config")
    return config


def schedule(config: dict[str, Any], steps: int | None, epochs: int | None) -> tuple[list[str], str]:
    """The short runs' flags, and how to say them: as many steps, or epochs, as asked, else a few in the unit the
    config counts in (a :class:`~litpoly.data.StepLoader` serves a run that counts steps in one epoch).

    Example:
        >>> schedule({"trainer": {"max_steps": 2400, "max_epochs": None}}, None, None)
        (['--trainer.max_steps', '20', '--trainer.max_epochs', '-1'], '20 steps')
        >>> schedule({"trainer": {"max_steps": -1, "max_epochs": 10}}, None, 3)[1]
        '3 epochs'
    """
    trainer = config.get("trainer") or {}
    counts_steps = (trainer.get("max_steps") or -1) > 0 and trainer.get("max_epochs") in (None, -1)
    if steps is not None or (epochs is None and counts_steps):
        steps = steps or DEFAULT_STEPS
        return ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1"], f"{steps} steps"
    epochs = epochs or DEFAULT_EPOCHS
    return ["--trainer.max_epochs", str(epochs), "--trainer.max_steps", "-1"], f"{epochs} epochs"


def measure(name: str, runner: Runner, reference: Reference, config: dict[str, Any], options: argparse.Namespace,
            done: dict[str, Row]) -> Row:  # fmt: skip
    """One property's row (``done``: the rows measured before it).

    Once the reference run has trained, what goes wrong is a finding about the project: a run that fails to resume
    from its checkpoint, a checkpoint that cannot be read, fail the property that needed them.
    """
    determinism = done["determinism"].status == "PASS" if "determinism" in done else None
    measures: dict[str, Callable[[], Row]] = {
        "determinism": lambda: properties.determinism(runner, reference, config.get("seed_everything")),
        "resume": lambda: properties.resume(runner, reference, determinism),
        "ddp": lambda: properties.ddp(runner, reference, config),
        "checkpoint": lambda: properties.checkpoint(reference),
        "export": lambda: properties.export_round_trip(runner, reference),
        "learning": lambda: properties.learning(reference, options.overfit_steps),
        "gradients": lambda: properties.gradients(reference),
    }
    quietly = output_to(runner.log) if name in IN_THIS_PROCESS else contextlib.nullcontext()
    try:
        with quietly:  # what the user's code prints, or warns, goes with the runs' output
            return measures[name]()
    except (CheckError, ValueError) as error:  # a run's own line, or a checkpoint's
        return Row(name, "FAIL", None, "-", one_line(str(error)))
    except Exception as error:  # the user's code, called by the check outside a run
        return Row(name, "FAIL", None, "-", one_line(f"{type(error).__name__}: {error}"))


def check(argv: list[str], train_script: Path, default_config: Path | None) -> int:
    """Measure the properties ``--only`` names on the project the other flags select; the exit status."""
    started = time.perf_counter()
    options, rest = parser().parse_known_args(argv)
    args = train_flags(rest)
    config = parsed_config(args, default_config)
    flags, length = schedule(config, options.steps, options.epochs)
    model = (config.get("model") or {}).get("class_path", "?")
    data = (config.get("data") or {}).get("class_path", "no data module")
    heading = f"Check of {model} on {data}: runs of {length}, seed {config.get('seed_everything')}"
    print(heading, flush=True)
    folder = Path(tempfile.mkdtemp(prefix="litpoly-check-"))
    measured: dict[str, Row] = {}
    try:
        runner = Runner(args, flags, folder, train_script, default_config, say=lambda line: print(line, flush=True))
        watch = Watch()
        cli = runner.fit("reference", callbacks=[watch])
        reference = Reference(cli, watch, last_checkpoint(folder / "reference"), str(model))
        for name in (p for p in ORDER if p in options.only):
            measured[name] = measure(name, runner, reference, config, options, measured)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [measured[name] for name in PROPERTIES if name in measured]
    root = Path(str((config.get("trainer") or {}).get("default_root_dir") or os.getcwd())).expanduser()
    report = report_folder(root / "lightning_logs")
    seconds = time.perf_counter() - started
    command = [without_password(arg) if "://" in arg else arg for arg in argv]  # a tracking URL's credentials
    facts = {"command": ["scripts/check.py", *command], "model": model, "data": data, "runs": length,
             "steps": reference.steps, "seconds": round(seconds, 1), "summary": summary(rows),
             "versions": {"python": platform.python_version(), "torch": torch.__version__,
                          "lightning": L.__version__}}  # fmt: skip
    write_report(report, rows, heading, facts)
    shown = os.path.relpath(report) if report.is_relative_to(Path.cwd()) else str(report)
    print(f"\n{table(rows)}\n{summary(rows)}")
    print(f"Report: {shown}/report.txt (and report.json); checked in {seconds:.0f} s")
    return 1 if any(row.status == "FAIL" for row in rows) else 0


def main(argv: Sequence[str] | None, train_script: Path, default_config: Path | None = None) -> int:
    """The command line (``argv``, or ``sys.argv[1:]``); the exit status: 0 all pass or skip, 1 a property fails,
    2 the check cannot run (one line on stderr, as :func:`litpoly.cli.main` says it)."""
    try:
        return check(list(sys.argv[1:] if argv is None else argv), train_script, default_config)
    except RunError as error:  # a CheckError, or the settings' own (train.py's line)
        return exit_status(error)
    except KeyboardInterrupt:
        print("check.py: interrupted; nothing written", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT


__all__ = ["PROPERTIES", "main"]
