"""Interruption and exact resume, with real processes and real signals, for both problems.

The sine example trains on the full batch with SGD or RMSprop; the two-moons classifier on shuffled
mini-batches with Adam, over epochs. Either way, a run stopped by SIGINT, SIGTERM or SIGKILL and resumed
must end exactly where the uninterrupted run ends: weights and optimizer state, bit for bit.
"""

from __future__ import annotations

import random
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import SINE, TWOMOONS, Problem, assert_same_weights, load_checkpoint, subprocess_env, train_command

#: Long enough that a signal lands mid-run: the sine's 2400 full-batch steps; 60 epochs of 7 mini-batches.
LONG = {SINE.name: ["--model.optimizer", "rmsprop"], TWOMOONS.name: ["--trainer.max_epochs", "60"]}
TOTAL = {SINE.name: 2400, TWOMOONS.name: 420}


def fit(problem: Problem, *args: str) -> list[str]:
    """The fit command of ``problem``, without what only slows it down here (the sine's parity replay)."""
    quiet = ["--model.parity", "false"] if problem is SINE else ["--trainer.enable_model_summary", "false"]
    return train_command("fit", *problem.select, *quiet, *args)


def last_checkpoint(cwd: Path, version: int) -> Path:
    return cwd / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"


def optimizer_state(path: Path) -> dict[str, Any]:
    return load_checkpoint(path)["optimizer_states"][0]["state"]  # type: ignore[no-any-return]


def assert_same_optimizer_state(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for index, state in a.items():
        for key, value in state.items():  # RMSprop's running averages, Adam's moments and step count
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b[index][key])), (index, key)


def start_and_signal(
    args: list[str], cwd: Path, at_step: int, signum: int, delay: float = 0.0
) -> subprocess.Popen[str]:
    """Start a real training process; once it has printed step ``at_step``, wait ``delay`` s and send ``signum``."""
    process = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env()
    )
    assert process.stdout is not None
    for line in process.stdout:
        match = re.match(r"^(\d+) ", line)
        if match and int(match.group(1)) >= at_step:
            time.sleep(delay)
            process.send_signal(signum)
            break
    return process


@pytest.mark.slow
@pytest.mark.parametrize(("problem", "signame"), [(SINE, "SIGINT"), (TWOMOONS, "SIGTERM")], ids=str)
def test_interrupt_then_resume_is_bit_identical(tmp_path: Path, problem: Problem, signame: str) -> None:
    args = fit(problem, *LONG[problem.name], "--console.every_n_steps", "1")
    full = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert full.returncode == 0, full.stderr[-2000:]

    signum = getattr(signal, signame)
    at_step = TOTAL[problem.name] // 3 + 2  # mid-epoch for the mini-batches too (7 batches an epoch)
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
    assert at_step < stopped < TOTAL[problem.name] and match.group(3) == str(saved)
    assert load_checkpoint(saved)["global_step"] == stopped  # the checkpoint is of the last completed step

    resumed = subprocess.run(
        [*args, "--ckpt_path", str(saved)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env=subprocess_env(),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = last_checkpoint(tmp_path, 0), last_checkpoint(tmp_path, 2)
    assert load_checkpoint(a)["global_step"] == load_checkpoint(b)["global_step"] == TOTAL[problem.name]
    assert_same_weights(load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"])  # bit for bit
    assert_same_optimizer_state(optimizer_state(a), optimizer_state(b))
    # The resumed run prints the very same losses from where it went on.
    losses = dict(re.findall(r"^(\d+) (\S+)$", full.stdout, re.M))
    for step, loss in re.findall(r"^(\d+) (\S+)$", resumed.stdout, re.M):
        assert int(step) > stopped - 1 and losses[step] == loss, step


@pytest.mark.slow
@pytest.mark.parametrize("problem", [SINE, TWOMOONS], ids=str)
def test_sigkill_at_random_moments_then_resume_from_last(tmp_path: Path, problem: Problem) -> None:
    """A checkpoint every step, so kills land mid-write too; every file on disk stays whole, and resuming from
    the newest run's last.ckpt each time ends exactly where an uninterrupted run does."""
    steps = {SINE.name: ["--trainer.max_steps", "600", "--model.optimizer", "rmsprop"],
             TWOMOONS.name: ["--trainer.max_epochs", "86"]}[problem.name]  # fmt: skip  # 600 and 602 steps
    args = fit(problem, *steps, "--console.every_n_steps", "1", "--checkpoint.every_n_train_steps", "1")
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(args, cwd=full, capture_output=True, timeout=300, check=True, env=subprocess_env())
    total = load_checkpoint(last_checkpoint(full, 0))["global_step"]

    rng = random.Random(20261126)
    resume: list[str] = []
    for kill in range(3):
        at_step = rng.randrange(50, 150) + 150 * kill
        process = start_and_signal([*args, *resume], tmp_path, at_step, signal.SIGKILL, delay=rng.uniform(0, 0.05))
        process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL
        for path in (tmp_path / "lightning_logs").rglob("*.ckpt"):  # every checkpoint on disk is whole
            checkpoint = load_checkpoint(path)
            assert 0 < checkpoint["global_step"] <= total, path
        resume = ["--ckpt_path", "last"]
    finished = subprocess.run([*args, *resume], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env=subprocess_env())  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    ours, reference = last_checkpoint(tmp_path, 3), last_checkpoint(full, 0)
    assert load_checkpoint(ours)["global_step"] == total
    assert_same_weights(load_checkpoint(ours)["state_dict"], load_checkpoint(reference)["state_dict"])
    assert_same_optimizer_state(optimizer_state(ours), optimizer_state(reference))
