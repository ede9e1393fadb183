"""Preemption under SLURM: the requeue signal stops a run as SIGTERM does, and puts the job back in the queue.

A job asks SLURM for a signal before its time limit (``#SBATCH --signal=USR1@90``) and for its requeue
(``#SBATCH --requeue``). Lightning's own answer (``SLURMEnvironment(auto_requeue=True)``) saves an
``hpc_ckpt_N.ckpt`` into the working folder from inside the signal handler, wherever the step is, and leaves
``--ckpt_path last`` to find nothing. Under SLURM the command line instead stops the run at the end of its step with
``last.ckpt`` saved in the run's folder (named after the job, see :mod:`litpoly.runs`), as for SIGTERM
(:mod:`litpoly.signals`), then requeues the job as Lightning does (``scontrol requeue``, from the first process). The
requeued job runs the same command, ``--ckpt_path last`` included, and goes on in its own folder where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess

from lightning.fabric.plugins.environments.slurm import SLURMEnvironment

#: The signal a job asks SLURM for before its time limit (``--signal=USR1@90``), as Lightning's default.
REQUEUE = signal.SIGUSR1


def managed() -> bool:
    """Whether SLURM runs this process as a job's task (not an interactive session), as Lightning detects it."""
    return SLURMEnvironment.detect()


def stops() -> tuple[int, ...]:
    """The signals that stop a run besides SIGINT, SIGTERM and SIGHUP: the requeue signal under SLURM."""
    return (REQUEUE,) if managed() else ()


def environment() -> SLURMEnvironment | None:
    """The cluster environment for the Trainer under SLURM: Lightning's own, without its requeue handling (the
    command line does that, at a step's end)."""
    return SLURMEnvironment(auto_requeue=False) if managed() else None


def requeue() -> str:
    """Put this job back in the queue (``scontrol requeue``, as Lightning does it) and say how that went."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if (array := os.environ.get("SLURM_ARRAY_JOB_ID")) is not None:
        job = f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    try:
        status = subprocess.run(["scontrol", "requeue", job], capture_output=True, timeout=60).returncode
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"could not requeue job {job} ({error}): resubmit it with the same command"
    if status != 0:
        return f"`scontrol requeue {job}` failed with status {status}: resubmit the job with the same command"
    return f"job {job} requeued: it goes on with the same command (--ckpt_path last)"
