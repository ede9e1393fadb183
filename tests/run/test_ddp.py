"""One process or two: Lightning's DDP on the CPU (gloo), for a summed loss and for a mean loss.

The rule (see litpoly.data.step_loader): every batch is split into equal shards, one per process, and DDP averages
the processes' gradients — exactly the one-process gradient for a mean loss (two-moons), and for a sum loss
multiplied by the number of processes (sine). A batch that cannot be split evenly is refused. With a standard
DataLoader (digits), 2 processes of batch B draw their shares of the permutation one process of batch 2B draws
(litpoly.callbacks.resume), so they end where it does; a training set that does not split evenly is said before
training.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import torch

from helpers import (
    PROBLEMS,
    REPO,
    Problem,
    RunCLI,
    assert_same_weights,
    load_checkpoint,
    run_folder,
    run_train,
    start_and_signal,
    train_command,
)

DDP = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]


@pytest.mark.slow
def test_two_processes_end_where_one_process_does(
    tmp_path: Path, problem: Problem, run_cli: RunCLI, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*problem.select, *problem.quick, *problem.draws_nothing, "--trainer.precision", "64-true",
            "--trainer.accelerator", "cpu"]  # fmt: skip
    ddp_cpu = ("--config", str(REPO / "configs" / "presets" / "ddp_cpu.yaml"))
    ddp = run_train(tmp_path, "fit", *args, *ddp_cpu, *problem.per_process, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "(seed 1234, 64-true on 2 processes on cpu)" in ddp.stdout
    run_cli("fit", *args)  # the same run on one process, in this one
    single_stdout = capsys.readouterr().out
    two, one = (load_checkpoint(run_folder(tmp_path, v) / "checkpoints" / "last.ckpt") for v in (0, 1))
    assert one["global_step"] == two["global_step"] > 0
    assert_same_weights(one["state_dict"], two["state_dict"], atol=1e-10)
    # The printed loss is the loss over all the batch's samples, not one process's share.
    printed_one, printed_two = (re.findall(r"^(\d+) (\S+)$", out, re.M) for out in (single_stdout, ddp.stdout))
    assert [s for s, _ in printed_one] == [s for s, _ in printed_two] and printed_one
    for (_, a), (_, b) in zip(printed_one, printed_two, strict=True):
        assert float(b) == pytest.approx(float(a), rel=1e-10)


@pytest.mark.slow
def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path: Path) -> None:
    """The example's 1999 points on 2 processes: a sum over unequal shards would be fine, a mean would not; the
    loader cannot tell, so it refuses, in one line, leaving nothing behind."""
    result = run_train(tmp_path, "fit", "--data.num_samples", "1999", *DDP, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert errors == [
        "error: Expected every training batch to split evenly across the 2 processes, but a batch of 1999 samples "
        "does not (1999 samples, batch size all). DDP averages the processes' gradients, which equals the "
        "one-process gradient only when each process has as many samples: choose a number of samples and a batch "
        "size divisible by 2"
    ]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("read_late", ["false", "true"])
def test_sigterm_to_the_ddp_launcher_stops_every_process(tmp_path: Path, read_late: str) -> None:
    """SIGTERM usually reaches only the process Lightning launched the others from: all must stop together, whether
    the processes agree at once or (``read_late``, an accelerator's way) a step later, on the device."""
    endless = ["--trainer.max_steps", "200000", "--trainer.max_epochs", "-1", "--console.every_n_steps", "100"]
    args = train_command("fit", *PROBLEMS[0].select, *DDP, *endless, "--guard.read_late", read_late)
    process = start_and_signal(args, tmp_path, 99, signal.SIGTERM)
    try:
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGTERM
    stops = [line for line in err.splitlines() if line.startswith("SIGTERM: stopped after step")]
    assert len(stops) == 1, err[-2000:]  # one process says why
    checkpoint = load_checkpoint(run_folder(tmp_path) / "checkpoints" / "last.ckpt")
    assert 99 < checkpoint["global_step"] < 200000
    assert all(torch.isfinite(w).all() for w in checkpoint["state_dict"].values())


@pytest.mark.slow
def test_read_one_step_late_every_process_stops_at_the_step_that_diverged(tmp_path: Path) -> None:
    """The guard's accelerator path (``--guard.read_late``, the processes' verdicts summed on the device and read a
    step later) on 2 processes stops where one process reading at once does, in one line."""
    diverging = ["--model.lr", "1e-4", "--trainer.max_steps", "300"]
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    one = run_train(tmp_path / "one", "fit", *diverging, timeout=600)
    two = run_train(tmp_path / "two", "fit", *diverging, *DDP, "--guard.read_late", "true", timeout=600)
    lines = [[x for x in r.stderr.splitlines() if x.startswith("error:")] for r in (one, two)]
    assert one.returncode == two.returncode == 1, two.stderr[-2000:]
    assert len(lines[0]) == len(lines[1]) == 1 and "training diverged at step" in lines[0][0], lines
    assert lines[1] == lines[0]
