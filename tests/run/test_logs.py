"""What every run records in TensorBoard, for both problems, read back with TensorBoard's own readers and server."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning import LightningModule
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from helpers import PROBLEMS, Problem, RunCLI, free_port, held_out, hparams_plugin, http_json, run_folder
from litpoly.callbacks.report import flat_hparams


def load(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def replayed_learning_rates(model: LightningModule, steps: int) -> list[float]:
    """The learning rate before each of ``steps`` steps, from a fresh optimizer and schedule made by the model's own
    ``configure_optimizers`` and stepped without training (a constant rate when it has no schedule)."""
    configured = model.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    scheduler = configured.get("lr_scheduler") if isinstance(configured, dict) else None
    scheduler = scheduler["scheduler"] if isinstance(scheduler, dict) else scheduler
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping the schedule without optimizer steps is the point here
        for step in range(steps):
            lrs.append(optimizer.param_groups[0]["lr"])
            if scheduler is not None and step + 1 < steps:
                scheduler.step()
    return lrs


def test_scalars_agree_with_the_console(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick)
    out = capsys.readouterr().out
    events = load(run_folder(tmp_path))
    # Every loss line the console printed is the logged `train/loss` at the same step: the same cadence here.
    printed = {int(step): float(loss) for step, loss in re.findall(r"^(\d+) (\S+)$", out, re.M)}
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert printed and printed.keys() == logged.keys()
    for step, loss in printed.items():
        assert logged[step] == pytest.approx(loss, rel=1e-6), step
    # Lightning's LearningRateMonitor (lr-<Optimizer>) on the same steps: the rate each logged step used, as the
    # run's own schedule gives it, replayed on a fresh optimizer.
    lrs = replayed_learning_rates(cli.model, max(logged) + 1)
    (tag,) = [t for t in events.Tags()["scalars"] if t.startswith("lr-")]
    assert [(e.step, e.value) for e in events.Scalars(tag)] == [
        (s, pytest.approx(lrs[s], rel=1e-6)) for s in sorted(logged)
    ]
    x, y = held_out(cli.trainer.val_dataloaders)
    validation = {f"val/{name}" for name in problem.witness(cli.model.state_dict(), x, y)}
    assert validation <= set(events.Tags()["scalars"])


def test_hyperparameters_and_config_are_the_runs(problem: Problem, run_cli: RunCLI, tmp_path: Path) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick)
    run = run_folder(tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    content = hparams_plugin(run)
    # Only the session's hyperparameters: no fixed list of metrics, so TensorBoard offers every scalar as one.
    assert set(content) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    logged = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    for group in ("model", "data"):
        for key, value in config[group]["init_args"].items():
            if value is not None and not isinstance(value, list):
                assert logged[key] == pytest.approx(value) if isinstance(value, float) else logged[key] == value, key
    assert logged["seed"] == config["seed_everything"] == 1234
    assert logged["precision"] == "32-true" and logged["devices"] == 1
    assert logged["model"] == type(cli.model).__qualname__ and logged["data"] == type(cli.datamodule).__qualname__
    # hparams.yaml holds the same values (as they are: None and lists, where TensorBoard takes their text).
    saved = flat_hparams(yaml.safe_load((run / "hparams.yaml").read_text()))
    assert saved.keys() == logged.keys()
    assert all(saved[k] == logged[k] for k in saved)
    text = load(run).Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert [line.removeprefix("    ") for line in text.splitlines()] == (run / "config.yaml").read_text().splitlines()


@pytest.mark.slow
def test_tensorboard_serves_every_problem_side_by_side(run_cli: RunCLI, tmp_path: Path) -> None:
    """The real client: `tensorboard --logdir` on 127.0.0.1, asked over HTTP for scalars and the HPARAMS table."""
    clis = [run_cli("fit", *problem.select, *problem.quick) for problem in PROBLEMS]
    logs = tmp_path / "lightning_logs"
    versions = range(len(clis))
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logs), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"

    def get(path: str, body: dict[str, Any] | None = None) -> Any:
        return http_json(base + path, body)

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                tags = get("/plugin/scalars/tags")
                if all("train/loss" in tags.get(f"version_{v}", {}) for v in versions):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not serve the runs in 90 s"
            time.sleep(0.5)
        series = get("/plugin/scalars/scalars?run=version_1&tag=train/loss")
        events = load(logs / "version_1").Scalars("train/loss")
        assert [(step, value) for _, step, value in series] == [(e.step, pytest.approx(e.value)) for e in events]
        experiment = get("/plugin/hparams/experiment", {"experimentName": ""})
        hparams = {info["name"] for info in experiment["hparamInfos"]}
        metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
        # Every model's settings and every run's scalars, in one table.
        settings = {k for cli in clis for k in (*cli.model.hparams, *cli.datamodule.hparams) if not k.startswith("_")}
        assert settings | {"seed", "precision", "devices", "max_steps", "max_epochs"} <= hparams
        assert set().union(*(load(logs / f"version_{v}").Tags()["scalars"] for v in versions)) <= metrics
    finally:
        server.terminate()
        server.wait(timeout=30)
