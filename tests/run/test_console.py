"""What a run prints to a log file or a pipe: whole lines, one message each, no progress-bar frames."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import preloaded
from helpers import PROBLEMS, TRAIN, TWOMOONS, Problem, RunCLI, load_checkpoint, run_folder, subprocess_env


def through_a_pipe(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python scripts/train.py …`` with its output read through pipes, as ``> train.log`` or ``| tee`` do; the
    progress bar left on."""
    command = [sys.executable, str(TRAIN), *args]
    return preloaded.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=subprocess_env())


def test_a_run_through_a_pipe_prints_whole_lines(problem: Problem, tmp_path: Path) -> None:
    result = through_a_pipe(tmp_path, "fit", *problem.select, *problem.quick)
    assert result.returncode == 0, result.stderr[-2000:]
    for stream in (result.stdout, result.stderr):
        assert "\r" not in stream and "\x1b[" not in stream  # no redrawn frames, no terminal escapes
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"Run folder: \S+ \(seed 1234, 32-true on cpu\)", lines[0]), lines[0]
    every = int(problem.quick[problem.quick.index("--console.every_n_steps") + 1])
    losses = [line for line in lines if re.fullmatch(r"\d+ [-+.\deE]+", line)]
    assert [int(line.split()[0]) for line in losses] == list(range(every - 1, problem.steps, every))
    progress = [line for line in lines if line.startswith("Epoch ")]
    assert progress and re.fullmatch(
        r"Epoch \d+, step \d+(/\d+)?, [\d.e+]+ it/s: .*train/loss=[\d.e+-]+.*", progress[-1]
    )


def test_errors_and_stops_through_a_pipe_are_lines_of_their_own(tmp_path: Path) -> None:
    """A diverged run's error comes on a line of its own, not glued to a progress-bar frame."""
    problem = PROBLEMS[0]
    result = through_a_pipe(tmp_path, "fit", *problem.select, "--guard.divergence_threshold", "1e-9")
    assert result.returncode == 1
    assert "\r" not in result.stdout + result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: training diverged at step 0: the loss ")


def test_every_fit_ends_with_its_checkpoints_and_final_metrics(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model that prints nothing of its own (two moons): the fit's last lines name last.ckpt with its step, the
    best checkpoint with the score TensorBoard's reader finds lowest, and each metric's final value."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_cli("fit", *TWOMOONS.select, *TWOMOONS.quick, "--best.monitor", "val/loss")
    lines = capsys.readouterr().out.splitlines()
    folder = run_folder(tmp_path)
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    val_loss = [event.value for event in sorted(events.Scalars("val/loss"), key=lambda e: e.step)]
    step = load_checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"]
    assert step == TWOMOONS.steps
    assert (
        lines[-2] == f"Checkpoints: {folder / 'checkpoints' / 'last.ckpt'} (step {step}), best.ckpt (val/loss "
        f"{min(val_loss):.6g})"
    )
    assert lines[-1].startswith("Final metrics: ") and f"val/loss {val_loss[-1]:.6g}" in lines[-1]
