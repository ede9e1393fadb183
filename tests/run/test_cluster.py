"""Many machines, proven on one: two node ranks started by torchrun as the README says, over 127.0.0.1, end where one
process does; and under SLURM (its variables set as SLURM sets them, ``scontrol`` stood in for) the requeue signal
stops a run at a step's end, requeues the job, and the same command goes on to where an unbroken run ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import preloaded
from helpers import (
    DIGITS,
    REPO,
    assert_same_weights,
    free_port,
    load_checkpoint,
    run_folder,
    run_train,
    start_and_signal,
    subprocess_env,
    train_command,
)


@pytest.mark.slow
def test_two_node_ranks_started_by_torchrun_end_where_one_process_does(tmp_path: Path) -> None:
    """``torchrun --nnodes 2 --node_rank R`` on each "node", one process each, with a standard DataLoader of
    shuffled files and workers: the two processes together make the one-process run, in float64."""
    args = [*DIGITS.select, *DIGITS.quick, *DIGITS.draws_nothing, "--trainer.precision", "64-true",
            "--trainer.accelerator", "cpu"]  # fmt: skip
    port = str(free_port())

    def node(rank: int) -> subprocess.Popen[str]:  # the README's command, on "node" `rank`
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                    "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port]  # fmt: skip
        train = [str(REPO / "scripts" / "train.py"), "fit", "--trainer.enable_progress_bar", "false", *args,
                 "--trainer.strategy", "ddp", "--trainer.num_nodes", "2", "--trainer.devices", "1"]  # fmt: skip
        return subprocess.Popen([*torchrun, *train, *DIGITS.per_process], cwd=tmp_path, env=subprocess_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip

    nodes = [node(0), node(1)]
    said = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in said]
    assert "64-true on 2 processes on cpu" in said[0][0]
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]  # one run, one folder
    one = run_train(tmp_path, "fit", *args, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two, single = (load_checkpoint(run_folder(tmp_path, v) / "checkpoints" / "last.ckpt") for v in (0, 1))
    assert single["global_step"] == two["global_step"] > 0
    assert_same_weights(single["state_dict"], two["state_dict"], atol=1e-10)


@pytest.fixture
def slurm_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's processes run as SLURM job 4242's one task; ``scontrol`` writes its arguments to the file this
    returns."""
    calls, bin_dir = tmp_path / "scontrol.calls", tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name, value in {"SLURM_NTASKS": "1", "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "train", "SLURM_PROCID": "0",
                        "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    return calls


@pytest.mark.slow
def test_slurms_requeue_signal_saves_at_a_step_end_requeues_and_the_same_command_goes_on(
    slurm_job: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    command = train_command("fit", "--console.every_n_steps", "10", "--model.parity", "false", "--ckpt_path", "last")
    process = start_and_signal(command, job, 199, signal.SIGUSR1)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1, err[-3000:]
    line = err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"SIGUSR1: stopped after step (\d+); checkpoint saved to (\S+)\. Resume with the same settings plus: "
        r"--ckpt_path \S+; job 4242 requeued: it goes on with the same command \(--ckpt_path last\)",
        line,
    )
    assert match is not None, line
    assert slurm_job.read_text().split() == ["requeue", "4242"]
    saved = Path(match.group(2))
    assert saved == job / "lightning_logs" / "4242" / "checkpoints" / "last.ckpt"
    assert 199 < load_checkpoint(saved)["global_step"] == int(match.group(1)) < 2400
    assert not list(job.rglob("hpc_ckpt*"))  # Lightning's own mid-step save stays off
    # The requeued job: the same command, in its own folder, on to the end.
    again = preloaded.run(command, cwd=job, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "max_steps=2400` reached" in again.stderr, (
        again.stdout[-1500:] + again.stderr[-1500:]
    )
    assert "exists and is not empty" not in again.stderr  # its own checkpoints: nothing to warn of
    assert [p.name for p in (job / "lightning_logs").iterdir()] == ["4242"]
    assert not list(job.rglob("*-v1.ckpt"))  # its own last.ckpt overwritten, not one beside it
    for name in ("SLURM_NTASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(name)
    unbroken = tmp_path / "unbroken"
    unbroken.mkdir()
    assert run_train(unbroken, "fit", "--model.parity", "false").returncode == 0
    resumed, straight = (load_checkpoint(p) for p in (saved, run_folder(unbroken) / "checkpoints" / "last.ckpt"))
    assert resumed["global_step"] == straight["global_step"] == 2400
    assert_same_weights(resumed["state_dict"], straight["state_dict"])
