"""CSV and MLflow beside TensorBoard (configs/loggers/), for both problems, read back with each tool's own reader.

TensorBoard's event file is the witness: what the CSV file and MLflow (its SQLite store through ``MlflowClient``, a
real ``mlflow server`` through its REST API) hold must be what TensorBoard got, value for value — TensorBoard keeps
a scalar as a float32, the others the float it was logged as, so each of theirs must round to TensorBoard's.
"""

from __future__ import annotations

import contextlib
import csv
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import yaml
from lightning.pytorch.callbacks import Callback
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import PROBLEMS, REPO, TWOMOONS, RunCLI, free_port, http_json, load_checkpoint, run_folder, subprocess_env
from litpoly.callbacks.report import flat_hparams
from litpoly.cli import DEFAULT_CONFIG
from litpoly.cli import run as run_command

LOGGERS = REPO / "configs" / "loggers"
Series = dict[str, list[tuple[int, float]]]


def loggers(name: str) -> list[str]:
    return ["--config", str(LOGGERS / f"{name}.yaml")]


def tensorboard_scalars(run: Path) -> Series:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag)) for tag in events.Tags()["scalars"]}


def csv_scalars(path: Path) -> Series:
    series: Series = defaultdict(list)
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            for key, value in row.items():
                if key != "step" and value != "":
                    series[key].append((int(row["step"]), float(value)))
    return {key: sorted(points) for key, points in series.items()}


def assert_as_tensorboard_got(series: Series, tensorboard: Series) -> None:
    """The same metrics at the same steps, each value the float32 TensorBoard stored."""
    assert series.keys() == tensorboard.keys()
    for key, points in series.items():
        rounded = [(step, float(np.float32(value))) for step, value in points]
        assert sorted(rounded) == tensorboard[key], key


def expected_params(run: Path) -> dict[str, str]:
    """The MLflow params of a run: its hyperparameters (``hparams.yaml``) and its config (``config.yaml``, under
    ``config/``), as Lightning's MLFlowLogger writes them (text, cut to 250 characters)."""
    params = flat_hparams(yaml.safe_load((run / "hparams.yaml").read_text()))
    params.update(flat_hparams(yaml.safe_load((run / "config.yaml").read_text()), prefix="config/"))
    return {key: str(value)[:250] for key, value in params.items()}


def test_csv_and_mlflow_get_what_tensorboard_gets(run_cli: RunCLI, tmp_path: Path) -> None:
    """Every problem, one after the other, with TensorBoard, CSV and MLflow: one run folder each, one MLflow store."""
    from mlflow.tracking import MlflowClient

    for problem in PROBLEMS:
        run_cli("fit", *problem.select, *problem.quick, *loggers("all"))
    logs = tmp_path / "lightning_logs"
    versions = [f"version_{v}" for v in range(len(PROBLEMS))]
    assert sorted(p.name for p in logs.iterdir()) == ["mlartifacts", "mlflow.db", *versions]
    client = MlflowClient(f"sqlite:///{logs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lightning_logs")
    assert experiment is not None
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert runs.keys() == set(versions)  # named after their run folders, side by side in one store
    for version in range(len(PROBLEMS)):
        run = run_folder(tmp_path, version)
        tensorboard = tensorboard_scalars(run)
        assert {"train/loss", "epoch"} <= tensorboard.keys() and any(k.startswith("lr-") for k in tensorboard)
        assert_as_tensorboard_got(csv_scalars(run / "metrics.csv"), tensorboard)  # metrics.csv in the run folder
        mlflow_run = runs[f"version_{version}"]
        assert mlflow_run.info.status == "FINISHED"
        history = {key: [(m.step, m.value) for m in client.get_metric_history(mlflow_run.info.run_id, key)]
                   for key in mlflow_run.data.metrics}  # fmt: skip
        assert_as_tensorboard_got(history, tensorboard)
        # The final metrics: the last value of each.
        assert {k: np.float32(v) for k, v in mlflow_run.data.metrics.items()} == {
            key: np.float32(max(points)[1]) for key, points in tensorboard.items()
        }
        assert mlflow_run.data.params == expected_params(run)
        artifact = client.download_artifacts(mlflow_run.info.run_id, "config.yaml", str(tmp_path))
        assert Path(artifact).read_text() == (run / "config.yaml").read_text()
        assert Path(mlflow_run.info.artifact_uri).is_relative_to(logs / "mlartifacts")


def test_logger_configs_parse_and_take_a_tracking_uri(capsys: pytest.CaptureFixture[str], monkeypatch: Any) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])
    expected = {
        "csv": ["litpoly.loggers.ThrottledTensorBoardLogger", "litpoly.loggers.CSVLogger"],
        "mlflow": ["litpoly.loggers.ThrottledTensorBoardLogger", "lightning.pytorch.loggers.MLFlowLogger"],
        "all": ["litpoly.loggers.ThrottledTensorBoardLogger", "litpoly.loggers.CSVLogger",
                "lightning.pytorch.loggers.MLFlowLogger"],
    }  # fmt: skip
    assert {p.stem for p in LOGGERS.glob("*.yaml")} == expected.keys()
    for name, classes in expected.items():
        uri = [] if name == "csv" else ["--trainer.logger.tracking_uri", "http://tracking.example:5000"]
        with pytest.raises(SystemExit):
            run_command(["fit", *loggers(name), *uri, "--print_config"], default_config=DEFAULT_CONFIG)
        logger = yaml.safe_load(capsys.readouterr().out)["trainer"]["logger"]
        assert [entry["class_path"] for entry in logger] == classes, name
        if uri:  # the flag reaches MLflow, in the list the config file gave
            assert logger[-1]["init_args"]["tracking_uri"] == uri[1]


def test_fast_dev_run_with_every_logger_writes_nothing(run_cli: RunCLI, tmp_path: Path) -> None:
    cli = run_cli("fit", *loggers("all"), "--trainer.fast_dev_run", "true")
    assert cli.trainer.global_step == 1
    assert list(tmp_path.iterdir()) == []  # no run folder, no MLflow store


def test_an_unreachable_tracking_server_fails_at_once(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", *loggers("mlflow"), "--trainer.logger.tracking_uri", uri)
    assert exit_.value.code == 2
    assert time.monotonic() - started < 30  # one try, not MLflow's minutes of retries
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: the MLflow tracking server {uri} does not answer (Connection refused): start it, or give another "
        "`trainer.logger.tracking_uri` (or MLFLOW_TRACKING_URI)"
    )
    assert list(tmp_path.iterdir()) == []


def test_mlflow_cannot_come_first(run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run_cli("fit", "--trainer.logger", "MLFlowLogger")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.startswith("error: `trainer.logger`: the first logger gives the run folder")
    assert list(tmp_path.iterdir()) == []


def test_the_default_run_needs_no_mlflow_and_asking_for_it_without_says_how(tmp_path: Path) -> None:
    """In a process where importing mlflow fails (the extra not installed): a default run trains without trying to
    import it; a run that asks for MLflow ends with one line naming the fix, exit 2, nothing written."""
    code = f"""
import sys
tried = []
class NoMLflow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "mlflow":
            tried.append(name)
            raise ImportError(f"No module named {{name!r}}")
sys.meta_path.insert(0, NoMLflow())
from litpoly.cli import main
quick = ["--trainer.max_steps", "20", "--trainer.enable_progress_bar", "false", "--model.parity", "false"]
main(["fit", *quick], {str(DEFAULT_CONFIG)!r})
print("default run tried to import:", tried, "imported:", [m for m in sys.modules if m.startswith("mlflow")])
try:
    main(["fit", *quick, "--config", {str(LOGGERS / "mlflow.yaml")!r}], {str(DEFAULT_CONFIG)!r})
except SystemExit as exit_:
    print("exit", exit_.code)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=subprocess_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "default run tried to import: [] imported: []" in result.stdout
    assert result.stdout.strip().endswith("exit 2")
    assert result.stderr.strip().splitlines()[-1] == (
        'error: `trainer.logger` asks for MLflow, which is not installed: pip install -e ".[mlflow]"'
    )
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]  # the default run's only


@contextlib.contextmanager
def mlflow_server(store: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A real `mlflow server` on 127.0.0.1 with its store under ``store``: its URL and its process, stopped after."""
    port = free_port()
    store.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art")],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.3)
        yield base, server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_receives_the_run(run_cli: RunCLI, tmp_path: Path) -> None:
    """A real `mlflow server` on 127.0.0.1 gets the run over HTTP; read back over MLflow's REST API with urllib. The
    password in the tracking URI reaches no file: neither the run folder's nor the server's store and artifacts."""
    with mlflow_server(tmp_path / "server") as (base, _):

        def api(path: str, body: dict[str, Any] | None = None, **query: str) -> Any:
            url = f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
            return http_json(url, body)

        with_password = base.replace("://", "://alice:s3cret@")  # the password never reaches a file
        run_cli("fit", *TWOMOONS.select, *TWOMOONS.quick, *loggers("mlflow"), "--trainer.logger.tracking_uri",
                with_password)  # fmt: skip
        run = run_folder(tmp_path)
        assert f"tracking_uri: {base.replace('://', '://…@')}" in (run / "config.yaml").read_text()
        written = [path for path in tmp_path.rglob("*") if path.is_file()]
        assert len(written) > 5 and not [path for path in written if b"s3cret" in path.read_bytes()]
        assert not (tmp_path / "lightning_logs" / "mlflow.db").exists()  # the server's store, not the local one
        experiment = api("experiments/get-by-name", experiment_name="lightning_logs")["experiment"]
        [found] = api("runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        info, data = found["info"], found["data"]
        assert info["run_name"] == "version_0" and info["status"] == "FINISHED"
        assert {p["key"]: p["value"] for p in data["params"]} == expected_params(run)
        tensorboard = tensorboard_scalars(run)
        assert {m["key"]: np.float32(m["value"]) for m in data["metrics"]} == {
            key: np.float32(max(points)[1]) for key, points in tensorboard.items()
        }
        history = api("metrics/get-history", run_id=info["run_id"], metric_key="train/loss")["metrics"]
        assert_as_tensorboard_got({"train/loss": [(m["step"], m["value"]) for m in history]},
                                  {"train/loss": tensorboard["train/loss"]})  # fmt: skip
        query = urllib.parse.urlencode({"path": "config.yaml", "run_uuid": info["run_id"]})
        with urllib.request.urlopen(f"{base}/get-artifact?{query}", timeout=10) as response:
            assert response.read().decode() == (run / "config.yaml").read_text()


class KillAt(Callback):
    """Kills the tracking server's process group after training step ``step``, and waits until it is gone."""

    def __init__(self, server: subprocess.Popen[bytes], step: int) -> None:
        self.server, self.step = server, step

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.step:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait(timeout=30)


@pytest.mark.slow
def test_a_tracking_server_lost_mid_run_costs_no_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The server dies at step 40 of 120: the run trains to the end, says so in one line, and its TensorBoard file
    and last checkpoint hold every step."""
    monkeypatch.chdir(tmp_path)
    with mlflow_server(tmp_path / "server") as (base, server):
        settings = ("--trainer.max_steps", "120", "--trainer.log_every_n_steps", "10", "--model.parity", "false",
                    "--trainer.logger.tracking_uri", base, "--trainer.enable_progress_bar", "false")  # fmt: skip
        cli = run_command(["fit", *loggers("mlflow"), *settings], DEFAULT_CONFIG, callbacks=[KillAt(server, 40)])
    assert cli.trainer.global_step == 120
    run = run_folder(tmp_path)
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 120
    assert max(step for step, _ in tensorboard_scalars(run)["train/loss"]) == 119
    said = [line for line in capsys.readouterr().err.splitlines() if "MLflow" in line]
    assert len(said) == 1 and said[0].startswith(f"Warning: MLflow at {base} failed (")
    assert said[0].endswith("the run goes on without it, its run folder and checkpoints intact.")


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("file:///{tmp}/mlruns", "(The filesystem tracking backend"),  # MLflow's own refusal, not jsonargparse's
        ("sqlite:////proc/no-such-folder/mlflow.db", "([Errno 2] No such file or directory: '/proc/no-such-folder')"),
    ],
    ids=["file-store", "unmakeable-sqlite"],
)
def test_a_tracking_store_mlflow_refuses_is_one_line_with_its_reason(
    uri: str, reason: str, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = uri.format(tmp=tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        run_cli("fit", *TWOMOONS.select, *loggers("mlflow"), "--trainer.logger.tracking_uri", uri)
    assert excinfo.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: MLflow cannot use the tracking store {uri} {reason}") and len(line) < 500, line
    assert not (tmp_path / "lightning_logs").exists()
