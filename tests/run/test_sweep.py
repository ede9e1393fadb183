"""Sweeps (scripts/sweep.py, litpoly.sweep) on every problem: trials that are ordinary runs, pruning by step,
kill and resume, two workers on one SQLite study and on one PostgreSQL database, and bad input."""

from __future__ import annotations

import contextlib
import glob
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import optuna
import pytest
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

import preloaded
from helpers import REPO, Problem, hparams_plugin, subprocess_env
from litpoly.cli import DEFAULT_CONFIG
from litpoly.errors import SettingError
from litpoly.sweep import BEYOND_PLAN, open_storage, sweep

SWEEP = REPO / "scripts" / "sweep.py"
#: What each problem's sweep searches and watches.
SEARCH = {
    "sine": ("val/sse", {"low": 1.0e-7, "high": 3.0e-6, "log": True}),
    "twomoons": ("val/loss", {"low": 1.0e-3, "high": 1.0e-1, "log": True}),
    "digits": ("val/loss", {"low": 1.0e-3, "high": 1.0e-1, "log": True}),
}
Trials = list[optuna.trial.FrozenTrial]


def write_space(folder: Path, problem: Problem, **changes: Any) -> Path:
    metric, lr = SEARCH[problem.name]
    space = {
        "name": f"{problem.name}-lr",
        "metric": metric,
        "trials": 3,
        "args": [*problem.select, *problem.quick, "--trainer.enable_progress_bar", "false"],
        "params": {"model.lr": lr},
    }
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump({**space, **changes}))
    return path


def both_workers_take_a_trial(folder: Path) -> list[str]:
    """Flags that make each trial's run wait at its start until both workers have one (``tests/rendezvous.py``): a
    worker that starts first could otherwise run every short trial before the other has started."""
    meet = {"class_path": "rendezvous.Rendezvous", "init_args": {"folder": str(folder / "arrived")}}
    return ["--trainer.callbacks+", json.dumps(meet)]


def study_trials(logs: Path, name: str, storage: str | None = None) -> Trials:
    url = storage or f"sqlite:///{logs / 'sweeps' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=url).get_trials()


def states(trials: Trials) -> list[str]:
    return sorted(t.state.name for t in trials)


def planned(trials: Trials) -> Trials:
    """The trials that ran, less any given up unrun because two workers began the last one at the same moment
    (checked to be that: failed, with no settings drawn)."""
    beyond = [t for t in trials if BEYOND_PLAN in t.user_attrs]
    assert all(t.state.name == "FAIL" and not t.params for t in beyond)
    return [t for t in trials if t not in beyond]


def run_folder(trial: optuna.trial.FrozenTrial) -> Path:
    return Path(trial.user_attrs["run_folder"])


def tensorboard_values(folder: Path, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tag)}


@pytest.fixture
def in_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in ``tmp_path`` with the second problem importable, as scripts/train.py's tests do."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "tests"))
    monkeypatch.setattr("sys.argv", ["sweep.py"])  # LightningCLI warns when pytest's own argv is there too
    return tmp_path


def test_each_trial_is_an_ordinary_run_and_its_result_is_what_tensorboard_recorded(
    problem: Problem, in_tests: Path
) -> None:
    logs = in_tests / "lightning_logs"
    study = sweep(write_space(in_tests, problem), DEFAULT_CONFIG, logs=logs)
    metric, _ = SEARCH[problem.name]
    trials = study.get_trials()
    assert states(trials) == ["COMPLETE"] * 3
    for trial in trials:
        folder = run_folder(trial)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        assert config["model"]["init_args"]["lr"] == trial.params["model.lr"]  # the sampled setting, as run
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        # The trial's value and its reports are the run's own validations, as TensorBoard's file has them.
        logged = tensorboard_values(folder, metric)
        last_step = max(logged)
        assert trial.value == pytest.approx(logged[last_step], rel=1e-6)
        assert trial.intermediate_values == pytest.approx(logged, rel=1e-6)
        # TensorBoard's HPARAMS tab has the trial, with the lr it ran at (for every trial side by side).
        start = plugin_data_pb2.HParamsPluginData.FromString(
            hparams_plugin(folder)["_hparams_/session_start_info"]
        ).session_start_info
        assert start.hparams["lr"].number_value == pytest.approx(trial.params["model.lr"], rel=1e-12)
        assert trial.user_attrs["command"].startswith("python scripts/train.py fit ")
        assert f"--model.lr {trial.params['model.lr']}" in trial.user_attrs["command"]


def test_hopeless_trials_are_pruned_by_the_median_of_the_others_at_the_same_step(in_tests: Path) -> None:
    from helpers import SINE

    space = write_space(
        in_tests,
        SINE,
        trials=5,
        args=["--trainer.max_steps", "300", "--trainer.enable_progress_bar", "false", "--model.parity", "false"],
        params={"model.lr": {"low": 1.0e-8, "high": 3.0e-6, "log": True}},
        pruner={"n_startup_trials": 2, "n_warmup_steps": 50},
    )
    trials = sweep(space, DEFAULT_CONFIG, logs=in_tests / "lightning_logs").get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert pruned, "no trial was pruned"
    for trial in pruned:
        step, value = max(trial.intermediate_values.items())
        # MedianPruner's rule: worse than the median of the trials completed before it, at the same step.
        complete = [t for t in trials if t.state.name == "COMPLETE" and t.datetime_complete < trial.datetime_complete]
        assert value > np.median([t.intermediate_values[step] for t in complete])
        assert max(tensorboard_values(run_folder(trial), "val/sse")) == step  # it stopped at that validation


def sweep_command(space: Path, *args: str) -> list[str]:
    return [sys.executable, str(SWEEP), str(space), *args]


def mid_trial(number: int, before: int | None = None) -> Callable[[Trials], bool]:
    """Whether trial ``number`` is running and has reported once (its last report before step ``before``, if
    given: steps enough to go that a signal sent now lands mid-trial)."""

    def running(trials: Trials) -> bool:
        reported = trials[number].intermediate_values if len(trials) > number else {}
        return bool(reported) and trials[number].state.name == "RUNNING" and max(reported) < (before or math.inf)

    return running


def wait_until(logs: Path, name: str, process: preloaded.Process, ready: Callable[[Trials], bool]) -> None:
    """Wait until the study's trials are ``ready`` (while the sweep runs)."""
    folder = logs / "sweeps" / name
    url = f"sqlite:///{folder / 'study.db'}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        # Not before a trial has begun: opening the storage while the sweep creates it would race its creation of
        # Optuna's tables (and fail the sweep with "cannot open the study's storage").
        if any(folder.glob("trial_*.log")):
            with contextlib.suppress(Exception):  # a read while a worker writes may fail: the next one is fine
                if ready(optuna.load_study(study_name=name, storage=url).get_trials()):
                    return
        time.sleep(0.2)
    if process.poll() is None:
        process.kill()
    _, err = process.communicate()
    pytest.fail(f"the study never got there (sweep exit status {process.returncode}): {err!r}")


def interrupt_mid_trial(command: list[str], cwd: Path, ready: Callable[[Trials], bool]) -> str:
    """Start the sweep ``command``, send SIGINT to its own process once its trials are ``ready`` (mid-trial), and
    return what it printed on stderr, after checking it stopped with exit status 130."""
    sweep_process = preloaded.popen(
        command, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_until(cwd / "lightning_logs", "sine-lr", sweep_process, ready)
    sweep_process.send_signal(signal.SIGINT)
    _, err = sweep_process.communicate(timeout=120)
    assert sweep_process.returncode == 130, err
    return err.decode()


@pytest.mark.slow
def test_a_sweep_stopped_by_ctrl_c_then_killed_resumes_with_the_planned_trials_and_none_run_twice(
    tmp_path: Path,
) -> None:
    from helpers import SINE

    space = write_space(tmp_path, SINE, trials=4, args=["--trainer.max_steps", "1000", "--model.parity", "false"])
    logs = tmp_path / "lightning_logs"
    command = sweep_command(space, "--grace_period", "5")

    # Ctrl-C in the middle of trial 1: the run stops cleanly, the trial is marked failed, the sweep exits 130.
    err = interrupt_mid_trial(command, tmp_path, mid_trial(1))
    assert "Interrupted: the same command goes on with this study." in err
    assert [t.state.name for t in study_trials(logs, "sine-lr")] == ["COMPLETE", "FAIL"]

    # SIGKILL in the middle of the next trial: nothing can mark it; it is left running, with no heartbeat.
    second = preloaded.popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
    wait_until(logs, "sine-lr", second, mid_trial(2))
    second.send_signal(signal.SIGKILL)
    second.wait()
    before = study_trials(logs, "sine-lr")
    assert [t.state.name for t in before] == ["COMPLETE", "FAIL", "RUNNING"]

    resumed = preloaded.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 of 4 trials finished" in resumed.stdout
    after = study_trials(logs, "sine-lr")
    finished = [t for t in after if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4
    assert not [t for t in after if t.state.name in ("RUNNING", "WAITING")]  # none left running
    assert after[0].value == before[0].value and after[0].datetime_complete == before[0].datetime_complete  # kept
    assert after[2].state.name == "FAIL"  # the killed trial, found by its missing heartbeat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retried = [t for t in finished if RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == 2]
    assert len(retried) == 1 and retried[0].params == before[2].params  # its settings, run once more
    assert len({t.params["model.lr"] for t in finished}) == 4  # no settings run twice
    assert len({t.user_attrs["run_folder"] for t in finished}) == 4


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_stop_together_on_sigint_to_the_sweep(tmp_path: Path) -> None:
    from helpers import SINE

    args = ["--trainer.max_steps", "600", "--model.parity", "false", *both_workers_take_a_trial(tmp_path)]
    space = write_space(tmp_path, SINE, trials=6, args=args)
    logs = tmp_path / "lightning_logs"

    def both_finished_one_and_one_more_runs(trials: Trials) -> bool:
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        return len({t.user_attrs["worker"] for t in complete}) == 2 and any(
            mid_trial(t.number, 400)(trials) for t in trials
        )

    # SIGINT to the sweep's own process only (as `kill -INT` or a scheduler sends it), once each worker has finished
    # a trial and one is mid-trial: both workers stop. (The same command then goes on, as with one worker.)
    err = interrupt_mid_trial(sweep_command(space, "--workers", "2"), tmp_path, both_finished_one_and_one_more_runs)
    assert "Interrupted: the same command goes on with this study." in err
    trials = study_trials(logs, "sine-lr")
    assert "RUNNING" not in states(trials) and "FAIL" in states(trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len({t.params["model.lr"] for t in complete}) == len(complete)  # each worker its own settings
    for trial in complete:  # each a whole run, with its validations on record
        assert max(tensorboard_values(run_folder(trial), "val/sse")) == 599


@pytest.mark.slow
def test_ctrl_c_on_a_sweep_whose_trials_read_with_dataloader_workers_stops_it_cleanly(tmp_path: Path) -> None:
    """Ctrl-C at a terminal reaches the sweep, its trial's run and the run's DataLoader workers at once: the trial
    is interrupted (failed, no error of its own), not failed by a DataLoader error, and the sweep stops with its
    one line."""
    from helpers import DIGITS

    args = [*DIGITS.select, "--trainer.max_epochs", "40", "--trainer.enable_progress_bar", "false"]
    space = write_space(tmp_path, DIGITS, trials=3, args=args)
    logs = tmp_path / "lightning_logs"
    process = preloaded.popen(sweep_command(space), cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
    wait_until(logs, "digits-lr", process, mid_trial(0))
    os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
    _, err = process.communicate(timeout=120)
    said = err.decode()
    assert process.returncode == 130, said[-3000:]
    assert "Interrupted: the same command goes on with this study." in said
    (trial,) = study_trials(logs, "digits-lr")
    assert trial.state.name == "FAIL" and "error" not in trial.user_attrs, trial.user_attrs
    log = (logs / "sweeps" / "digits-lr" / "trial_0.log").read_text()
    assert "DataLoader" not in said + log and "Traceback" not in said + log, log[-3000:]


@contextlib.contextmanager
def postgresql_cluster() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (initdb, pg_ctl; Debian's postgresql package), stopped after:
    its URL, and ``pg_ctl(action)`` to stop or start it meanwhile."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb") or ""]
    if not found[-1]:
        missing = "PostgreSQL's initdb is not installed (Debian: apt-get install postgresql; see .ci/run)"
        if os.environ.get("LITPOLY_REQUIRE_POSTGRESQL"):  # CI installs it, and sets this: there it must run
            pytest.fail(missing)
        pytest.skip(missing)
    bin_dir = Path(found[-1]).parent
    # Its own folder, not under pytest's (which only root may enter): as root, the server runs as `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="litpoly-postgresql-"))
    data = folder / "data"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        os.chmod(folder, 0o755)
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-U", "sweep", "--auth=trust"], check=True,
                       capture_output=True)  # fmt: skip
        options = f"-h 127.0.0.1 -p {port} -k {data}"
        # -l: the server's output to a file; inheriting a pipe of ours, it would keep subprocess.run waiting.
        control = [*as_user, bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", data / "server.log", "-w"]

        def pg_ctl(action: str) -> None:
            stop = ["-m", "immediate"] if action == "stop" else []  # as a crash, or a lost machine, would
            subprocess.run([*control, *stop, action], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        pg_ctl("start")
        subprocess.run([bin_dir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "sweep", "study"], check=True)
        yield f"postgresql://sweep@127.0.0.1:{port}/study", pg_ctl
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgresql() -> Iterator[str]:
    with postgresql_cluster() as (url, _):
        yield url


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path: Path, postgresql: str) -> None:
    """Two worker processes, one PostgreSQL study; the password in the storage URL reaches no file and no output."""
    from helpers import TWOMOONS

    args = [*TWOMOONS.select, *TWOMOONS.quick, "--trainer.enable_progress_bar", "false"]
    space = write_space(tmp_path, TWOMOONS, trials=4, args=[*args, *both_workers_take_a_trial(tmp_path)])
    with_password = postgresql.replace("sweep@", "sweep:s3cret@")  # (trust auth: the server asks for none)
    done = preloaded.run(
        sweep_command(space, "--workers", "2", "--storage", with_password),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "postgresql://…@127.0.0.1" in done.stdout  # the URL shown without its credentials
    written = [path for path in tmp_path.rglob("*") if path.is_file()]  # trial logs, configs, event files
    assert len(written) > 20 and not [path for path in written if b"s3cret" in path.read_bytes()]
    assert "s3cret" not in done.stdout + done.stderr
    trials = planned(study_trials(tmp_path, "twomoons-lr", storage=postgresql))
    assert states(trials) == ["COMPLETE"] * 4, done.stdout
    assert len({t.user_attrs["worker"] for t in trials}) == 2
    assert not (tmp_path / "lightning_logs" / "sweeps" / "twomoons-lr" / "study.db").exists()  # all in PostgreSQL
    best = min(trials, key=lambda t: t.value)
    assert f"Best: trial {best.number}, val/loss {best.value:.6g}" in done.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"model.no_such_setting": {"low": 1, "high": 2}}}, "no_such_setting"),
        ({"params": {"model.lr": {"low": 1.0e-3, "high": 1.0e-3}}}, "`params.model.lr` is an empty range"),
        ({"metric": "val/no_such_metric"}, "`metric` 'val/no_such_metric' is not logged"),
        ({"trials": 0}, 'Parser key "trials": Not of type PositiveInt: 0'),
        ({"search": 1}, "Option 'search' is not accepted"),
        ({"pruner": {"patience": 3}}, "Parser key \"pruner\": litpoly.sweep.Pruner: Option 'patience' is not accepted"),
        ({"params": {"model.lr": {"low": 1e-3, "high": 0.1, "log": True, "step": 0.01}}}, "`params.model.lr`: "),
        ({"params": {"model.lr": {"lo": 1e-3, "high": 0.1}}}, "`params.model.lr`: Option 'lo' is not accepted"),
        ({"params": {"model.lr": {"low": "small", "high": 0.1}}}, 'Parser key "params.model.lr.low": Expected one of'),
        ({"direction": "down"}, 'Parser key "direction": Expected a typing.Literal'),
        ({"seed": None}, "Expected `seed` to be an integer, got None"),
        ({"name": "../../.."}, "Expected `name` to be a study name of letters, digits, '.', '_' and '-'"),
        ({"name": "/tmp/elsewhere"}, "(its folder under lightning_logs/sweeps/), got '/tmp/elsewhere'"),
        ({"args": ["--trainer.devices", "2"]}, "a sweep runs each trial in one process (trainer.devices 2"),
    ],
)
def test_bad_input_is_one_line_and_creates_no_study_or_run(
    in_tests: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    """A SettingError whose line names the key (jsonargparse's own complaint for a wrong key or type), printed by
    nothing: scripts/sweep.py says it, as train.py says its own (see the unreachable storage's test)."""
    from helpers import TWOMOONS

    space = write_space(in_tests, TWOMOONS, **change)
    with pytest.raises(SettingError) as refused:
        sweep(space, DEFAULT_CONFIG, logs=in_tests / "lightning_logs")
    line = refused.value.line
    assert refused.value.exit_code == 2 and "\n" not in line and line.startswith("error: ") and message in line, line
    assert not capsys.readouterr().err
    assert not (in_tests / "lightning_logs").exists()


def test_a_study_name_given_as_a_flag_stays_under_the_sweeps_folder(in_tests: Path) -> None:
    from helpers import TWOMOONS

    space = write_space(in_tests, TWOMOONS)
    with pytest.raises(SettingError, match=r"Expected `--name` to be a study name of letters, digits") as refused:
        sweep(space, DEFAULT_CONFIG, logs=in_tests / "lightning_logs", name="../../escaped")
    assert "got '../../escaped'" in refused.value.line
    assert not (in_tests / "lightning_logs").exists() and not (in_tests.parent / "escaped").exists()


def _open_at_the_barrier(url: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        open_storage(url)
        results.put("opened")
    except ValueError as error:
        results.put(str(error))


def test_sweeps_started_together_on_a_new_study_all_open_it(tmp_path: Path) -> None:
    """Two processes opening one new SQLite study at the same moment (the same command started on two machines,
    or twice): Optuna's first creation of its tables fails in one of them; open_storage opens it again."""
    context = multiprocessing.get_context("fork")  # (this process's torch has one thread: forking is safe)
    for attempt in range(3):
        url = f"sqlite:///{tmp_path / str(attempt) / 'study.db'}"
        barrier, results = context.Barrier(2), context.Queue()
        processes = [context.Process(target=_open_at_the_barrier, args=(url, barrier, results)) for _ in range(2)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=60)
        assert [results.get(timeout=5) for _ in processes] == ["opened", "opened"]


def test_an_unreachable_storage_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    from helpers import TWOMOONS

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    space = write_space(tmp_path, TWOMOONS)
    done = preloaded.run(
        sweep_command(space, "--storage", f"postgresql://sweep:secret@127.0.0.1:{port}/study"),
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot open the study's storage postgresql://…@127.0.0.1"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "secret" not in done.stderr
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.slow
def test_trials_with_mlflow_share_one_store_side_by_side(in_tests: Path) -> None:
    """Two workers: their first trials open the new store at the same moment (they take turns, or one fails)."""
    from mlflow.tracking import MlflowClient

    from helpers import SINE

    args = ["--config", str(REPO / "configs" / "loggers" / "mlflow.yaml"), *SINE.quick, "--model.parity", "false"]
    space = write_space(in_tests, SINE, trials=2, args=args)
    study = sweep(space, DEFAULT_CONFIG, workers=2, logs=in_tests / "lightning_logs")
    store = in_tests / "lightning_logs" / "sweeps" / "sine-lr" / "lightning_logs" / "mlflow.db"
    client = MlflowClient(f"sqlite:///{store}")
    runs = {run.info.run_name: run for run in client.search_runs(client.search_experiments()[0].experiment_id)}
    assert sorted(runs) == ["trial_0", "trial_1"]
    assert [trial.state.name for trial in study.get_trials()] == ["COMPLETE", "COMPLETE"]
    for trial in study.get_trials():
        run = runs[f"trial_{trial.number}"]
        assert float(run.data.params["lr"]) == trial.params["model.lr"]
        assert run.data.metrics["val/sse"] == pytest.approx(trial.value, rel=1e-6)


class NoMLflow:
    """An import hook that makes ``import mlflow`` fail, as where the mlflow extra is not installed."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name.split(".")[0] == "mlflow":
            raise ImportError(f"No module named {name!r}")


def test_a_sweep_asking_for_mlflow_without_it_is_one_line_and_creates_nothing(
    in_tests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import SINE

    for name in [m for m in sys.modules if m.split(".")[0] == "mlflow"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [NoMLflow(), *sys.meta_path])
    args = ["--config", str(REPO / "configs" / "loggers" / "mlflow.yaml"), *SINE.quick]
    with pytest.raises(SettingError) as refused:
        sweep(write_space(in_tests, SINE, args=args), DEFAULT_CONFIG, logs=in_tests / "lightning_logs")
    assert refused.value.line == ('error: the search space\'s run fails: `trainer.logger` asks for MLflow, which is '
                                  'not installed: pip install -e ".[mlflow]"')  # fmt: skip
    assert not (in_tests / "lightning_logs").exists()


class FailAboveLr(L.Callback):
    """Fails a run whose lr is above ``lr``, as a model's own bug or an out-of-memory error would."""

    def __init__(self, lr: float) -> None:
        self.lr = lr

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.hparams["lr"] > self.lr:
            raise RuntimeError(f"this model cannot train at lr {pl_module.hparams['lr']}")


def test_a_run_that_raises_fails_its_trial_with_the_reason_and_the_sweep_goes_on(in_tests: Path) -> None:
    from helpers import TWOMOONS

    args = [*TWOMOONS.select, *TWOMOONS.quick, "--trainer.callbacks+=test_sweep.FailAboveLr",
            "--trainer.callbacks.lr", "0.1"]  # fmt: skip
    space = write_space(in_tests, TWOMOONS, trials=3, args=args, params={"model.lr": {"choices": [0.001, 0.002, 0.5]}})
    trials = sweep(space, DEFAULT_CONFIG, logs=in_tests / "lightning_logs").get_trials()
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed, "no trial drew lr 0.5"
    for trial in failed:
        assert trial.params["model.lr"] == 0.5
        assert trial.user_attrs["error"] == "RuntimeError: this model cannot train at lr 0.5"
        log = in_tests / "lightning_logs" / "sweeps" / "twomoons-lr" / f"trial_{trial.number}.log"
        assert "Traceback" in log.read_text()  # the details, in the trial's own log
    assert len([t for t in trials if t.state.name == "COMPLETE"]) == 3  # and the sweep went on to its plan
    assert all(t.params["model.lr"] < 0.1 for t in trials if t.state.name == "COMPLETE")


@pytest.mark.slow
def test_a_trial_left_running_without_a_heartbeat_is_failed_and_its_place_taken(in_tests: Path) -> None:
    """A trial whose process, or database, died after Optuna created it and before its first heartbeat has none:
    the same command gives it one, finds it stale a grace period later and runs a trial in its place, instead of
    waiting for it for ever."""
    from helpers import SINE

    space = write_space(in_tests, SINE, trials=1)
    logs = in_tests / "lightning_logs"
    sweep(space, DEFAULT_CONFIG, logs=logs)  # the study, one trial finished
    url = f"sqlite:///{logs / 'sweeps' / 'sine-lr' / 'study.db'}"
    orphan = optuna.load_study(study_name="sine-lr", storage=url).ask()  # running, and never a heartbeat
    resumed = preloaded.run(sweep_command(space, "--trials", "2", "--grace_period", "4"), cwd=in_tests,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    trials = study_trials(logs, "sine-lr")
    assert trials[orphan.number].state.name == "FAIL"
    assert states(trials) == ["COMPLETE", "COMPLETE", "FAIL"]


@contextlib.contextmanager
def nothing_logged(path: Path) -> Iterator[None]:
    """Instead of the trial's log file: what the run prints goes to pytest's capture, nothing to the file."""
    path.touch()
    yield


def test_a_diverged_trial_is_pruned_with_the_runs_own_line_read_from_no_log(
    in_tests: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """SGD at lr 1e-2 diverges on the example within a few steps: the run raises Diverged, whose line the trial
    records as `diverged` and prints, and the trial ends pruned (the sampler learns the region is bad)."""
    from helpers import SINE

    monkeypatch.setattr("litpoly.sweep.trial.output_to", nothing_logged)  # no log file to read anything back from
    monkeypatch.setattr("litpoly.sweep.study.check", lambda *args: None)  # (the space's own checks: tested above)
    args = [*SINE.quick, "--model.parity", "false", "--trainer.enable_progress_bar", "false"]
    space = write_space(in_tests, SINE, trials=1, args=args, params={"model.lr": {"choices": [1.0e-2]}})
    logs = in_tests / "lightning_logs"
    (trial,) = sweep(space, DEFAULT_CONFIG, logs=logs).get_trials()
    assert trial.state.name == "PRUNED" and "error" not in trial.user_attrs
    reason = trial.user_attrs["diverged"]
    assert reason.startswith("training diverged at step ") and "SGD, lr=0.01" in reason, reason
    assert not (logs / "sweeps" / "sine-lr" / "trial_0.log").read_text()
    assert f"trial 0 (pruned): model.lr=0.01 — {reason}" in capsys.readouterr().out


def test_a_bad_space_or_flag_is_one_line_from_the_script(tmp_path: Path) -> None:
    """scripts/sweep.py says a SettingError, and jsonargparse's complaint about its own flags, as train.py does."""
    from helpers import TWOMOONS

    space = write_space(tmp_path, TWOMOONS, search=1)
    for args, said in [
        ([], f"error: the search space {space}: Option 'search' is not accepted"),
        (["--workers", "two"], "error: Parser key \"workers\": Expected a <class 'int'>. Got value: two"),
    ]:
        done = preloaded.run(sweep_command(space, *args), cwd=tmp_path, env=subprocess_env(), capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 2 and done.stderr == said + "\n", done.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_a_worker_takes_at_most_the_threads_omp_num_threads_sets(
    in_tests: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helpers import TWOMOONS

    threads: list[int] = []
    monkeypatch.setattr("litpoly.sweep.study.work", lambda setup, worker, n, *args, **kwargs: threads.append(n))
    monkeypatch.setattr("litpoly.sweep.study.check", lambda *args: None)  # (the space's own checks: tested above)
    space, logs = write_space(in_tests, TWOMOONS, trials=1), in_tests / "lightning_logs"
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 1))  # more than the cores: each worker still gets the cores
    sweep(space, DEFAULT_CONFIG, logs=logs)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # fewer: one thread
    sweep(space, DEFAULT_CONFIG, logs=logs)
    assert threads == [cores, 1]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # the other worker's ask()
def test_a_trial_begun_beyond_the_plan_is_given_up_unrun(
    in_tests: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import TWOMOONS

    # The race two workers can run into: another worker begins (and here finishes) the last planned trial just
    # after this one counted the study's trials, and just before this one begins its own.
    optimize = optuna.study.Study.optimize

    def another_worker_first(study: optuna.study.Study, *args: Any, **kwargs: Any) -> None:
        if not study.get_trials():
            study.tell(study.ask(), 0.5)
        optimize(study, *args, **kwargs)

    monkeypatch.setattr(optuna.study.Study, "optimize", another_worker_first)
    logs = in_tests / "lightning_logs"
    trials = sweep(write_space(in_tests, TWOMOONS, trials=1), DEFAULT_CONFIG, logs=logs).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs == {BEYOND_PLAN: True} and not trials[1].params  # given up before it drew settings
    assert not list((logs / "sweeps" / "twomoons-lr").rglob("trial_1*"))  # and before it wrote anything
    assert "Trials: 1 complete, 1 not run (beyond the plan)." in capsys.readouterr().out


def test_a_study_refuses_a_changed_space(in_tests: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from helpers import TWOMOONS

    sweep(write_space(in_tests, TWOMOONS, trials=1), DEFAULT_CONFIG, logs=in_tests / "lightning_logs")
    capsys.readouterr()
    with pytest.raises(SettingError) as refused:
        sweep(write_space(in_tests, TWOMOONS, trials=1, direction="maximize"), DEFAULT_CONFIG,
              logs=in_tests / "lightning_logs")  # fmt: skip
    assert refused.value.line.startswith("error: the study 'twomoons-lr' was begun with another search space")
    # As a study of its own, it runs, beside the first.
    changed = write_space(in_tests, TWOMOONS, trials=1, direction="maximize")
    study = sweep(changed, DEFAULT_CONFIG, logs=in_tests / "lightning_logs", name="twomoons-lr-2")
    assert study.direction.name == "MAXIMIZE" and len(study.get_trials()) == 1
    assert sorted(p.name for p in (in_tests / "lightning_logs" / "sweeps").iterdir()) == [
        "twomoons-lr",
        "twomoons-lr-2",
    ]


@pytest.mark.slow
def test_a_sweep_that_loses_its_database_says_so_in_one_line_and_the_same_command_goes_on(tmp_path: Path) -> None:
    """The PostgreSQL server stops (as a crash would) after the first trial: the sweep ends with one line and exit
    status 1, not Optuna's tracebacks; started again, the same command finishes the planned trials."""
    from helpers import TWOMOONS

    space = write_space(tmp_path, TWOMOONS, trials=3)
    with postgresql_cluster() as (url, pg_ctl):
        command = sweep_command(space, "--storage", url, "--grace_period", "4")
        sweep = preloaded.popen(command, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)  # fmt: skip
        assert sweep.stdout is not None
        for line in sweep.stdout:
            if line.startswith("trial 0 ("):
                break
        pg_ctl("stop")
        _, err = sweep.communicate(timeout=180)
        assert sweep.returncode == 1, err
        [line] = err.strip().splitlines()  # one line, no traceback
        assert line.startswith("error: lost the study's storage postgresql://…@127.0.0.1:"), line
        assert line.endswith("its finished trials are kept; run the same command again once it answers")
        pg_ctl("start")
        again = preloaded.run(command, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                              timeout=180)  # fmt: skip
        assert again.returncode == 0, again.stderr
        assert states(planned(study_trials(tmp_path, "twomoons-lr", storage=url)))[-3:] == ["COMPLETE"] * 3
