"""litpoly.runs: run folders and what `--ckpt_path last` and `best` mean, with several experiments in one
lightning_logs/ and under SLURM's job id; scripts/runs.py's list of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import preloaded
from helpers import REPO, TWOMOONS, RunCLI, load_checkpoint, run_folder, subprocess_env, train_command
from litpoly.check.runs import InterruptAt
from litpoly.cli import DEFAULT_CONFIG
from litpoly.cli import run as run_command
from litpoly.errors import Interrupted
from litpoly.runs import claim_version, release_claims

RMSPROP = ("--config", str(REPO / "configs" / "rmsprop.yaml"))
MODEL = ("--model.parity", "false")  # a model setting: commands of one experiment give it alike
QUICK = ("--trainer.max_steps", "20", "--trainer.val_check_interval", "10", *MODEL)


def checkpoint_of(folder: Path, which: str = "last") -> Path:
    return folder / "checkpoints" / f"{which}.ckpt"


def test_last_and_best_mean_a_run_of_the_commands_own_settings(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two configs of one model share lightning_logs/: each `last` and `best` resumes or evaluates its own runs,
    never the newer run of the other; another model's command starts afresh (fit) or is refused (validate)."""
    best = ("--best.monitor", "val/mse")
    run_cli("fit", *QUICK, *best)  # version_0: SGD, the default config
    run_cli("fit", *RMSPROP, *QUICK, *best)  # version_1: RMSprop, the newest
    sgd = run_cli("fit", *QUICK, *best, "--trainer.max_steps", "30", "--ckpt_path", "last")  # version_2
    assert Path(sgd.trainer.ckpt_path) == checkpoint_of(run_folder(tmp_path, 0))
    assert sgd.trainer.global_step == 30
    rmsprop = run_cli("validate", *RMSPROP, *MODEL, "--ckpt_path", "best")
    assert Path(rmsprop.trainer.ckpt_path) == checkpoint_of(run_folder(tmp_path, 1), "best")
    again = run_cli("test", *MODEL, "--ckpt_path", "last")  # the SGD experiment's newest: the resumed run
    assert Path(again.trainer.ckpt_path) == checkpoint_of(run_folder(tmp_path, 2))
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run_cli("validate", *TWOMOONS.select, "--ckpt_path", "last")
    assert refused.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: `ckpt_path` last: no run under {tmp_path / 'lightning_logs'} with this command's model and data "
        "settings has a checkpoints/last.ckpt (3 with other settings do: give the settings they were trained with, "
        "or the checkpoint's path)"
    ]
    fresh = run_cli("fit", *TWOMOONS.select, "--trainer.max_epochs", "1", "--ckpt_path", "last")
    assert fresh.trainer.ckpt_path is None
    assert "(3 with other model or data settings left alone): starting a new run." in capsys.readouterr().out


@pytest.mark.parametrize("logger", [(), ("--trainer.logger", "false")], ids=["tensorboard", "no-logger"])
def test_a_requeued_slurm_job_resumes_its_own_run(
    logger: tuple[str, ...], run_cli: RunCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under SLURM the run folder is named after the job; the same command relaunched (`--requeue`, `--ckpt_path
    last`) goes on in that folder, with or without a logger."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_JOB_NAME", "train")  # not an interactive session, which Lightning ignores
    command = ("fit", *QUICK, *logger, "--checkpoint.every_n_train_steps", "5", "--ckpt_path", "last")
    first = run_cli(*command)
    folder = tmp_path / "lightning_logs" / "4242"
    assert first.trainer.ckpt_path is None and first.trainer.global_step == 20
    assert load_checkpoint(checkpoint_of(folder))["global_step"] == 20
    requeued = run_cli(*command, "--trainer.max_steps", "35")
    assert Path(requeued.trainer.ckpt_path) == checkpoint_of(folder)
    assert requeued.trainer.global_step == 35
    assert load_checkpoint(checkpoint_of(folder))["global_step"] == 35
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["4242"]


def test_the_next_run_folder_counts_as_lightnings_loggers_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from litpoly.runs import RUN_VERSION, next_run_folder

    for name in ("version_0", "version_3", "version_x", "4242"):
        (tmp_path / "lightning_logs" / name).mkdir(parents=True)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv(RUN_VERSION, raising=False)
    assert next_run_folder(tmp_path) == tmp_path / "lightning_logs" / "version_4"
    monkeypatch.setenv(RUN_VERSION, "trial_7")
    assert next_run_folder(tmp_path) == tmp_path / "lightning_logs" / "trial_7"


def test_scripts_runs_lists_each_run_with_its_status_and_best_score(
    run_cli: RunCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One finished run, one stopped by Ctrl-C: the list says which, with the best score TensorBoard's own reader
    finds in the run's event file."""
    best = ("--best.monitor", "val/mse")
    run_cli("fit", *QUICK, *best)
    with pytest.raises(Interrupted):
        run_command(["fit", *QUICK, *best, "--trainer.max_steps", "40", "--trainer.enable_progress_bar", "false"],
                    DEFAULT_CONFIG, callbacks=[InterruptAt(24)])  # fmt: skip  # stops after step 25
    listed = subprocess.run([sys.executable, str(REPO / "scripts" / "runs.py")], cwd=tmp_path, env=subprocess_env(),
                            capture_output=True, text=True, check=True).stdout.splitlines()  # fmt: skip
    assert listed[0].split() == ["run", "model", "step", "best", "status"]
    rows = [line.split(maxsplit=4) for line in listed[1:]]
    for row, (step, status) in zip(rows, [("20", "done (max_steps=20)"), ("25", "stopped at step 25")], strict=True):
        folder = tmp_path / "lightning_logs" / row[0]
        events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        events.Reload()
        lowest = min(event.value for event in events.Scalars("val/mse"))
        assert row[1:3] == ["sinefit.PolynomialRegressor", step]
        assert row[3] == "val/mse" and row[4].split(maxsplit=1) == [f"{lowest:.6g}", status]


def test_checkpoints_written_at_the_same_moment_are_ordered_by_their_numbers(tmp_path: Path) -> None:
    """Equal modification times (a copy that kept them, a coarse file system) do not leave ``last`` to the order
    the folder happens to list in: the run and the save with the higher number come first, as numbers count
    (``version_10`` after ``version_9``, which text order would reverse)."""
    from litpoly.runs import resume_candidates, run_checkpoints

    logs = tmp_path / "lightning_logs"
    names = [
        "version_9/checkpoints/last.ckpt", "version_9/checkpoints/epoch=0-step=100.ckpt",
        "version_10/checkpoints/epoch=0-step=100.ckpt", "version_10/checkpoints/epoch=1-step=200.ckpt",
        "version_10/checkpoints/last.ckpt", "version_10/checkpoints/best.ckpt", "version_9/checkpoints/best.ckpt",
    ]  # fmt: skip
    for name in names:
        (logs / name).parent.mkdir(parents=True, exist_ok=True)
        (logs / name).touch()
        os.utime(logs / name, ns=(1_700_000_000_000_000_000,) * 2)
    assert [str(p.relative_to(logs)) for p in resume_candidates(logs)] == [
        "version_10/checkpoints/last.ckpt", "version_10/checkpoints/epoch=1-step=200.ckpt",
        "version_10/checkpoints/epoch=0-step=100.ckpt", "version_10/checkpoints/best.ckpt",
        "version_9/checkpoints/last.ckpt", "version_9/checkpoints/epoch=0-step=100.ckpt",
        "version_9/checkpoints/best.ckpt",
    ]  # fmt: skip
    assert [p.parents[1].name for p in run_checkpoints(logs, "best")] == ["version_10", "version_9"]


def test_only_the_first_process_of_a_run_claims_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DDP's other processes (started with LOCAL_RANK=1, ...) count the folder but make none: Lightning's launcher may
    end them before they could remove it, as when the first process refuses a setting."""
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert claim_version(tmp_path) == 0 and not (tmp_path / "lightning_logs").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert claim_version(tmp_path) == 0 and (tmp_path / "lightning_logs" / "version_0").is_dir()
    release_claims()
    assert not (tmp_path / "lightning_logs").exists()


def test_runs_started_at_the_same_moment_each_claim_their_own_folder(tmp_path: Path) -> None:
    """Two runs of one config started together (loggers listed in a config, whose folder is fixed when the config is
    read): each claims its own ``version_N``, and neither writes into the other's folder nor stops with a traceback."""
    command = train_command("fit", "--config", str(REPO / "configs" / "loggers" / "csv.yaml"), "--trainer.max_steps",
                            "30", "--model.parity", "false")  # fmt: skip
    runs = [preloaded.popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    said = [run.communicate(timeout=180) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], said
    folders = sorted((tmp_path / "lightning_logs").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1"]
    for folder in folders:  # one run's files each: one event file, its own metrics and config
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1 and (folder / "metrics.csv").is_file()
        assert load_checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"] == 30
