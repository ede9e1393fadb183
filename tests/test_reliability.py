"""Divergence, interruption and exact resume, kill-safe checkpoints, bad checkpoints, determinism, DDP."""

from __future__ import annotations

import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import REPO, RunCLI

from litpoly.guard import AtomicCheckpointIO, NonFiniteCheckpointError

QUIET = ["--trainer.enable_progress_bar", "false", "--parity.enabled", "false"]


def train(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train.py"), "fit", *QUIET, *args]


def final_state(path: Path) -> tuple[int, torch.Tensor, dict[str, Any]]:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return checkpoint["global_step"], checkpoint["state_dict"]["coefficients"], checkpoint["optimizer_states"][0]


def last_checkpoint(cwd: Path, version: int) -> Path:
    return cwd / "lightning_logs" / f"version_{version}" / "checkpoints" / "last.ckpt"


def start_and_signal(
    args: list[str], cwd: Path, at_step: int, signum: int, delay: float = 0.0
) -> subprocess.Popen[str]:
    """Start a real training process; once it has printed step ``at_step``, wait ``delay`` s and send ``signum``."""
    process = subprocess.Popen(
        args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    for line in process.stdout:
        match = re.match(r"^(\d+) ", line)
        if match and int(match.group(1)) >= at_step:
            time.sleep(delay)
            process.send_signal(signum)
            break
    return process


# -- divergence ----------------------------------------------------------------------------------


def test_sgd_above_the_limit_is_warned_about_then_stopped_at_once(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--model.lr", "1e-5", "--checkpoint.every_n_train_steps", "10")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    warning = next(line for line in err if line.startswith("Warning:"))
    assert "SGD lr 1e-05 is above the stability limit" in warning and "3.56e-06" in warning
    match = re.fullmatch(
        r"error: training diverged at step (\d+): the loss is (inf|nan) \(sgd, lr=1e-05; SGD is stable only for "
        r"lr < 3\.56e-06 on this data\)\. Last good checkpoint: (\S+)\.",
        err[-1],
    )
    assert match is not None, err[-1]
    step = int(match.group(1))
    assert step < 100  # stopped at once, not after 2400 NaN steps
    # The last good checkpoint is finite and from before the divergence; no checkpoint holds NaN.
    kept_step, coefficients, _ = final_state(Path(match.group(3)))
    assert kept_step <= step and torch.isfinite(coefficients).all()
    for path in (tmp_path / "lightning_logs").rglob("*.ckpt"):
        assert torch.isfinite(final_state(path)[1]).all(), path


def test_just_below_the_limit_trains_without_warning(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    cli = run_cli("fit", "--model.lr", "3.5e-6", "--trainer.max_steps", "300")
    assert "stability limit" not in capsys.readouterr().err
    assert torch.isfinite(cli.model.coefficients).all()


# -- checkpoints that are never half-written --------------------------------------------------------


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def dies_halfway(self: Any, checkpoint: dict[str, Any], target: Path, storage_options: Any = None) -> None:
        Path(target).write_bytes(before[: len(before) // 2])
        raise OSError("killed while writing")

    monkeypatch.setattr("lightning.fabric.plugins.TorchCheckpointIO.save_checkpoint", dies_halfway)
    with pytest.raises(OSError, match="killed while writing"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    with pytest.raises(NonFiniteCheckpointError, match="not finite"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.nan])}}, path)
    assert not path.exists()


# -- interruption and exact resume, with real processes and real signals --------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("optimizer", "signame", "at_step"), [("sgd", "SIGINT", 700), ("rmsprop", "SIGTERM", 1234)])
def test_interrupt_then_resume_is_bit_identical(tmp_path: Path, optimizer: str, signame: str, at_step: int) -> None:
    args = train("--model.optimizer", optimizer, "--console.every_n_steps", "1")
    full = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True)

    signum = getattr(signal, signame)
    process = start_and_signal(args, tmp_path, at_step, signum)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signum
    message = err.strip().splitlines()[-1]
    match = re.fullmatch(
        rf"{signame}: stopped after step (\d+); checkpoint saved to (\S+)\. "
        r"Resume with the same settings plus: --ckpt_path (\S+)",
        message,
    )
    assert match is not None, message
    stopped, saved = int(match.group(1)), Path(match.group(2))
    assert at_step < stopped < 2400 and match.group(3) == str(saved)
    assert final_state(saved)[0] == stopped  # the checkpoint is of the last completed step

    resumed = subprocess.run(
        [*args, "--ckpt_path", str(saved)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    step_a, coefficients_a, optimizer_a = final_state(last_checkpoint(tmp_path, 0))
    step_b, coefficients_b, optimizer_b = final_state(last_checkpoint(tmp_path, 2))
    assert step_a == step_b == 2400
    assert torch.equal(coefficients_a, coefficients_b)  # bit for bit
    assert optimizer_a["state"].keys() == optimizer_b["state"].keys()
    for key, state in optimizer_a["state"].get(0, {}).items():  # RMSprop's running averages too
        assert torch.equal(torch.as_tensor(state), torch.as_tensor(optimizer_b["state"][0][key])), key
    result = re.compile(r"^(2399 \S+|Result: .*)$", re.M)
    assert result.findall(full.stdout) == result.findall(resumed.stdout)  # the same final loss and Result line


@pytest.mark.slow
def test_sigkill_at_random_moments_never_leaves_an_unreadable_checkpoint(tmp_path: Path) -> None:
    """Checkpoint every step, so kills land mid-write too; resume from the newest checkpoint each time."""
    args = train("--model.optimizer", "rmsprop", "--trainer.max_steps", "1500", "--console.every_n_steps", "1",
                 "--checkpoint.every_n_train_steps", "1")  # fmt: skip
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(args, cwd=full, capture_output=True, timeout=300, check=True)

    rng = random.Random(20261126)
    resume: list[str] = []
    for kill in range(3):
        at_step = rng.randrange(100, 400) + 400 * kill
        process = start_and_signal([*args, *resume], tmp_path, at_step, signal.SIGKILL, delay=rng.uniform(0, 0.05))
        process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL
        for path in (tmp_path / "lightning_logs").rglob("*.ckpt"):  # every checkpoint on disk is whole
            step, coefficients, _ = final_state(path)
            assert 0 < step <= 1500 and torch.isfinite(coefficients).all(), path
        resume = ["--ckpt_path", "last"]
    finished = subprocess.run([*args, *resume], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    step, coefficients, _ = final_state(last_checkpoint(tmp_path, 3))
    reference_step, reference, _ = final_state(last_checkpoint(full, 0))
    assert step == reference_step == 1500 and torch.equal(coefficients, reference)


# -- checkpoints that cannot be used ----------------------------------------------------------------


def test_unusable_checkpoints_are_one_line_errors(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        run_cli("fit", "--ckpt_path", "last")
    assert capsys.readouterr().err.strip().startswith("error: `ckpt_path` last: no run under")
    run_cli("fit", "--trainer.max_steps", "20", "--trainer.log_every_n_steps", "10")
    good = last_checkpoint(tmp_path, 0)
    truncated, text = tmp_path / "truncated.ckpt", tmp_path / "notes.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text.write_text("not a checkpoint")
    cases = [
        (["--ckpt_path", "nowhere.ckpt"], "no such checkpoint file: nowhere.ckpt"),
        (["--ckpt_path", str(truncated)], "is not a readable checkpoint (truncated or corrupt?)"),
        (["--ckpt_path", str(text)], "is not a readable checkpoint"),
        (["--ckpt_path", str(good), "--model.degree", "5"], "holds a degree-3 model, but `model.degree` is 5"),
    ]
    capsys.readouterr()
    for subcommand in ("fit", "validate"):
        for args, message in cases:
            with pytest.raises(SystemExit) as exit_info:
                run_cli(subcommand, *args)
            err = capsys.readouterr().err.strip().splitlines()
            assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], (subcommand, args, err)
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]  # nothing new written


# -- determinism ----------------------------------------------------------------------------------------


def test_seed_is_recorded_and_decides_the_start(run_cli: RunCLI, tmp_path: Path) -> None:
    quick = ["--trainer.max_steps", "20", "--trainer.log_every_n_steps", "10"]
    runs = [run_cli("fit", *quick), run_cli("fit", *quick), run_cli("fit", *quick, "--seed_everything", "7")]
    configs = [(tmp_path / "lightning_logs" / f"version_{v}" / "config.yaml").read_text() for v in range(3)]
    assert [re.search(r"^seed_everything: (\d+)$", c, re.M).group(1) for c in configs] == ["1234", "1234", "7"]  # type: ignore[union-attr]
    first, again, other = (cli.model for cli in runs)
    assert torch.equal(first.coefficients, again.coefficients)
    assert not torch.equal(first.initial_coefficients, other.initial_coefficients)


# -- one process or two: Lightning's DDP on the CPU (gloo) ---------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "atol"), [("64-true", 1e-12), ("32-true", 1e-6)])
def test_ddp_on_two_processes_ends_where_one_process_does(tmp_path: Path, precision: str, atol: float) -> None:
    """1999 points: the two shards differ in size, and no point may be dropped or duplicated."""
    args = train("--data.num_samples", "1999", "--trainer.max_steps", "1000", "--trainer.precision", precision,
                 "--trainer.accelerator", "cpu")  # fmt: skip
    single = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([*args, "--trainer.strategy", "ddp", "--trainer.devices", "2"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "Starting with 2 processes" in ddp.stdout + ddp.stderr
    step_one, one, _ = final_state(last_checkpoint(tmp_path, 0))
    step_two, two, _ = final_state(last_checkpoint(tmp_path, 1))
    assert step_one == step_two == 1000
    assert (one - two).abs().max().item() <= atol
    losses = re.compile(r"^(\d+) (\S+)$", re.M)
    printed_one, printed_two = losses.findall(single.stdout), losses.findall(ddp.stdout)
    assert [s for s, _ in printed_one] == [s for s, _ in printed_two] == [str(t) for t in range(99, 1000, 100)]
    for (_, a), (_, b) in zip(printed_one, printed_two, strict=True):  # the printed loss is the total, not a shard's
        assert float(b) == pytest.approx(float(a), rel=1e-5 if precision == "32-true" else 1e-12)


@pytest.mark.slow
def test_sigterm_to_the_ddp_launcher_stops_every_process(tmp_path: Path) -> None:
    """SIGTERM usually reaches only the process Lightning launched the others from: all must stop together."""
    args = train("--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
                 "--trainer.max_steps", "200000", "--console.every_n_steps", "100")  # fmt: skip
    process = start_and_signal(args, tmp_path, 299, signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    stops = [line for line in err.splitlines() if line.startswith("SIGTERM: stopped after step")]
    assert len(stops) == 1, err[-2000:]  # one process says why
    step, coefficients, _ = final_state(last_checkpoint(tmp_path, 0))
    assert 299 < step < 200000 and torch.isfinite(coefficients).all()
