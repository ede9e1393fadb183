"""CSV and MLflow beside TensorBoard (configs/loggers/), for both problems, read back with each tool's own reader.

TensorBoard's event file is the witness: what the CSV file and MLflow (its SQLite store through ``MlflowClient``, a
real ``mlflow server`` through its REST API) hold must be what TensorBoard got, value for value — TensorBoard keeps
a scalar as a float32, the others the float it was logged as, so each of theirs must round to TensorBoard's.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import DEFAULT_CONFIG, PROBLEMS, REPO, TWOMOONS, RunCLI, http_json, run_folder, subprocess_env
from litpoly.callbacks.report import flat_hparams
from litpoly.cli import run as run_command
from test_logs import free_port

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


@pytest.mark.slow
def test_a_tracking_server_receives_the_run(run_cli: RunCLI, tmp_path: Path) -> None:
    """A real `mlflow server` on 127.0.0.1 gets the run over HTTP; read back over MLflow's REST API with urllib."""
    port = free_port()
    store = tmp_path / "server"
    store.mkdir()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "art")],
        cwd=store, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def api(path: str, body: dict[str, Any] | None = None, **query: str) -> Any:
        return http_json(f"{base}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else ""), body)

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.3)
        run_cli("fit", *TWOMOONS.select, *TWOMOONS.quick, *loggers("mlflow"), "--trainer.logger.tracking_uri", base)
        run = run_folder(tmp_path)
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
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started
        server.wait(timeout=30)
