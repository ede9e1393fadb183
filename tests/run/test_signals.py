"""SIGINT, SIGTERM and SIGHUP at every stage of a command (litpoly.signals): each ends it with one line and exit
status 128 + the signal's number; a run stopped in training keeps a checkpoint of the step it names, and one stopped
before training keeps nothing. Real signals, sent to the process itself or to its whole group (DataLoader workers
included, as a terminal's Ctrl-C and ``kill -- -PGID`` send them)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import optuna
import pytest
import yaml

from helpers import DIGITS, TRAIN, load_checkpoint, run_folder, start_and_signal, subprocess_env, train_command
from litpoly.cli import DEFAULT_CONFIG, run
from litpoly.errors import Interrupted
from litpoly.sweep import SearchSpace, run_trial

QUICK = ["--trainer.max_steps", "20", "--model.parity", "false", "--trainer.enable_progress_bar", "false"]


class SendSignal(L.Callback):
    """Sends ``signum`` to this process at the hook ``hook``, once."""

    def __init__(self, hook: str, signum: int) -> None:
        self.signum, self.sent = signum, False
        setattr(self, hook, self._send)

    def _send(self, *args: object, **kwargs: object) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py"])  # LightningCLI warns when pytest's own argv is there too
    return tmp_path


BEFORE_TRAINING = "stopped before training began; nothing was saved."
IN = "stopped before `{}` finished; nothing was saved."


@pytest.mark.parametrize(
    ("subcommand", "hook", "signum", "said"),
    [
        ("fit", "setup", signal.SIGTERM, BEFORE_TRAINING),
        ("fit", "on_sanity_check_start", signal.SIGHUP, BEFORE_TRAINING),
        ("fit", "on_fit_start", signal.SIGINT, BEFORE_TRAINING),
        ("validate", "on_validation_batch_start", signal.SIGTERM, IN.format("validate")),
        ("predict", "on_predict_batch_start", signal.SIGHUP, IN.format("predict")),
    ],
)
def test_a_signal_before_training_or_in_an_evaluation_stops_at_once_and_keeps_nothing(
    subcommand: str, hook: str, signum: int, said: str, in_tmp: Path
) -> None:
    """Set-up, the sanity check and evaluations have no step to finish: the command stops at the end of the stage
    or batch under way, with one line and 128 + the signal's number (not Lightning's exit status 0 for SIGTERM),
    and the run folder it made is gone again. The signal handlers are the test process's own again afterwards."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    extra = []
    if subcommand != "fit":
        run(["fit", *QUICK], DEFAULT_CONFIG)
        extra = ["--ckpt_path", str(run_folder(in_tmp) / "checkpoints" / "last.ckpt")]
    runs = sorted((in_tmp / "lightning_logs").glob("*")) if subcommand != "fit" else []
    with pytest.raises(Interrupted) as stopped:
        run([subcommand, *QUICK[2:], *extra], DEFAULT_CONFIG, callbacks=[SendSignal(hook, signum)])
    assert stopped.value.line == f"{signal.Signals(signum).name}: {said}"
    assert stopped.value.exit_code == 128 + signum and not stopped.value.finished
    assert sorted((in_tmp / "lightning_logs").glob("*")) == runs  # no new run folder
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_after_the_last_step_lets_the_run_save_then_says_it_is_complete(in_tmp: Path) -> None:
    """A signal once training has ended (the final ``last.ckpt`` not yet written) waits for the save: the run is
    complete, and says so; its checkpoint holds the last step."""
    with pytest.raises(Interrupted) as stopped:
        run(["fit", *QUICK], DEFAULT_CONFIG, callbacks=[SendSignal("on_train_end", signal.SIGTERM)])
    last = run_folder(in_tmp) / "checkpoints" / "last.ckpt"
    assert stopped.value.line == f"SIGTERM after the last step (20): the run is complete, saved to {last}."
    assert stopped.value.finished and stopped.value.exit_code == 128 + signal.SIGTERM
    assert load_checkpoint(last)["global_step"] == 20


def test_ctrl_c_while_the_script_starts_is_one_line(tmp_path: Path) -> None:
    """Before the run layer is even imported (torch and Lightning take seconds to load): one line, no traceback."""
    process = subprocess.Popen([sys.executable, str(TRAIN), "fit"], cwd=tmp_path, env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.5)  # the interpreter has started (its own start-up is no Python code to handle a signal in)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGINT
    assert (out, err) == ("", "SIGINT: stopped before the run began; nothing was written.\n")
    assert not (tmp_path / "lightning_logs").exists()


def stopped_step(err: str, signame: str) -> tuple[int, Path]:
    """The step and the checkpoint that the run's one stop line names."""
    lines = [line for line in err.splitlines() if line.startswith(f"{signame}: stopped after step")]
    assert len(lines) == 1, err[-3000:]
    match = re.match(rf"{signame}: stopped after step (\d+); checkpoint saved to (\S+)\. Resume", lines[0])
    assert match is not None, lines[0]
    return int(match.group(1)), Path(match.group(2))


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_whole_group_stops_a_run_with_dataloader_workers_at_a_step_end(
    signum: int, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT), a closed terminal (SIGHUP) and ``kill -- -PGID`` or a scheduler (SIGTERM) reach the
    DataLoader workers too (PyTorch's workers die of SIGTERM at once): the run still stops at the end of a step,
    with no DataLoader error, and its checkpoint holds the step its line names."""
    endless = ["--trainer.max_epochs", "1000", "--console.every_n_steps", "8", "--trainer.enable_progress_bar", "false"]
    process = start_and_signal(train_command("fit", *DIGITS.select, *endless), tmp_path, 31, signum, group=True)
    _, err = process.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert process.returncode == 128 + signum, err[-3000:]
    assert "DataLoader" not in err and "Traceback" not in err, err[-3000:]
    step, checkpoint = stopped_step(err, name)
    assert step > 31 and load_checkpoint(checkpoint)["global_step"] == step


def test_a_trial_whose_run_had_finished_when_the_signal_came_keeps_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal after a trial's last step (Interrupted with ``finished``): the trial completes with its result and
    the sweep stops after it; one mid-run stops the sweep with the trial failed (``KeyboardInterrupt``)."""
    space_file = tmp_path / "space.yaml"
    space_file.write_text(yaml.safe_dump({"name": "s", "metric": "val/sse", "trials": 2,
                                          "params": {"model.lr": {"low": 1e-7, "high": 1e-6}}}))  # fmt: skip
    space = SearchSpace.load(space_file)

    def interrupted_run(finished: bool):  # type: ignore[no-untyped-def]
        def fake_run(args: list[str], default_config: Path | None, callbacks: list[L.Callback]) -> None:
            callbacks[0].last = 0.25  # type: ignore[attr-defined]  # the metric its validations reported
            raise Interrupted("SIGINT ...", signum=signal.SIGINT, finished=finished)

        return fake_run

    study = optuna.create_study()
    stopped: list[bool] = []
    monkeypatch.setattr("litpoly.sweep.trial.run", interrupted_run(finished=True))
    assert run_trial(study.ask(), space, tmp_path, None, stop_after=lambda: stopped.append(True)) == 0.25
    assert stopped == [True]
    monkeypatch.setattr("litpoly.sweep.trial.run", interrupted_run(finished=False))
    with pytest.raises(KeyboardInterrupt):
        run_trial(study.ask(), space, tmp_path, None, stop_after=lambda: stopped.append(True))
    assert stopped == [True]
