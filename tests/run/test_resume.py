"""Interruption and exact resume, with real processes and real signals, for every problem.

The sine example trains on the full batch with SGD or RMSprop; the two-moons classifier on shuffled
mini-batches with Adam, over epochs; the digits through a standard DataLoader with worker processes, dropout and
OneCycleLR. Either way, a run stopped by SIGINT, SIGTERM or SIGKILL and resumed must end exactly where the
uninterrupted run ends: weights and optimizer state, bit for bit.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

import preloaded
from helpers import (
    PROBLEMS,
    Problem,
    assert_same_optimizer_state,
    assert_same_weights,
    load_checkpoint,
    start_and_signal,
    subprocess_env,
    train_command,
)


def fit(problem: Problem, *args: str) -> list[str]:
    """The command of a long run of ``problem``, with ``args``."""
    return train_command("fit", *problem.select, *problem.long, *args)


def last_checkpoint(cwd: Path, version: int) -> Path:
    return cwd / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"


def optimizer_state(path: Path) -> dict[str, Any]:
    return load_checkpoint(path)["optimizer_states"][0]["state"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_interrupt_then_resume_is_bit_identical(tmp_path: Path, problem: Problem) -> None:
    signame = "SIGINT" if problem is PROBLEMS[0] else "SIGTERM"  # Ctrl-C for one, a scheduler's stop for the other
    args = fit(problem, "--console.every_n_steps", "1")
    (tmp_path / "full").mkdir()
    full_log = tmp_path / "full" / "stdout.txt"
    with full_log.open("w") as stdout:  # the uninterrupted run, alongside
        full = preloaded.popen(args, cwd=tmp_path / "full", stdout=stdout, stderr=subprocess.PIPE, text=True,
                                env=subprocess_env())  # fmt: skip

    signum = getattr(signal, signame)
    at_step = problem.long_steps // 3 + 2  # and some steps later: mid-epoch for mini-batches too
    process = start_and_signal(args, tmp_path, at_step, signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, err[-2000:]
    message = err.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"{signame}: stopped after step (\d+); checkpoint saved to (\S+)\. "
        r"Resume with the same settings plus: --ckpt_path (\S+)",
        message,
    )
    assert match is not None, message
    stopped, saved = int(match.group(1)), Path(match.group(2))
    assert at_step < stopped < problem.long_steps and match.group(3) == str(saved)
    assert load_checkpoint(saved)["global_step"] == stopped  # the checkpoint is of the last completed step

    resumed = preloaded.run(
        [*args, "--ckpt_path", str(saved)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=subprocess_env(),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _, full_err = full.communicate(timeout=300)
    assert full.returncode == 0, full_err[-2000:]
    a, b = last_checkpoint(tmp_path / "full", 0), last_checkpoint(tmp_path, 1)
    assert load_checkpoint(a)["global_step"] == load_checkpoint(b)["global_step"] == problem.long_steps
    assert_same_weights(load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"])  # bit for bit
    assert_same_optimizer_state(optimizer_state(a), optimizer_state(b))
    # The resumed run prints the very same losses from where it went on.
    losses = dict(re.findall(r"^(\d+) (\S+)$", full_log.read_text(), re.M))
    for step, loss in re.findall(r"^(\d+) (\S+)$", resumed.stdout, re.M):
        assert int(step) > stopped - 1 and losses[step] == loss, step


@pytest.mark.slow
@pytest.mark.parametrize("problem", [p for p in PROBLEMS if p.name != "sine"], ids=str)
def test_sigkill_at_random_moments_then_the_same_command_resumes(tmp_path: Path, problem: Problem) -> None:
    """The auto-resume idiom of preemptible jobs: the same command, with `--ckpt_path last`, launched again and
    again. The first launch has nothing to resume and starts fresh; each is killed at a random moment with its
    DataLoader workers, as a preempted job's processes all are (a checkpoint every step, so kills land mid-write
    too); every file on disk stays whole; the last launch runs to the end exactly where an uninterrupted run does
    (300 steps, counted in steps: for StepLoader one epoch that passes over the mini-batches several times, for a
    DataLoader an epoch a pass, the last one cut short).

    Five processes a problem, so run on every problem but the sine example: nothing here depends on the model,
    and its full batch is the easy case of an exact resume (which the interrupt test above proves for it)."""
    steps = ["--trainer.max_steps", "300", "--trainer.max_epochs", "-1"]
    args = fit(problem, *steps, "--console.every_n_steps", "1", "--checkpoint.every_n_train_steps", "1")
    full = tmp_path / "full"
    full.mkdir()
    uninterrupted = preloaded.popen(args, cwd=full, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     env=subprocess_env())  # fmt: skip  # alongside
    command = [*args, "--ckpt_path", "last"]
    rng = random.Random(20261126)
    for kill in range(3):
        at_step = rng.randrange(25, 75) + 75 * kill
        process = start_and_signal(command, tmp_path, at_step, signal.SIGKILL, rng.uniform(0, 0.05), group=True)
        _, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, err[-2000:]
        for path in (tmp_path / "lightning_logs").rglob("*.ckpt"):  # every checkpoint on disk is whole
            checkpoint = load_checkpoint(path)
            assert 0 < checkpoint["global_step"] <= 300, path
    finished = preloaded.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=subprocess_env())  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    _, err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, err[-2000:]
    total = load_checkpoint(last_checkpoint(full, 0))["global_step"]
    ours, reference = last_checkpoint(tmp_path, 3), last_checkpoint(full, 0)
    assert load_checkpoint(ours)["global_step"] == total
    assert_same_weights(load_checkpoint(ours)["state_dict"], load_checkpoint(reference)["state_dict"])
    assert_same_optimizer_state(optimizer_state(ours), optimizer_state(reference))
