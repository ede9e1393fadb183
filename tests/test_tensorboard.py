"""What a run shows in TensorBoard, read back with TensorBoard's own readers and its HTTP server."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, RunCLI
from tensorboard.backend.event_processing import plugin_event_accumulator
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2

STEPS = ["--trainer.max_steps", "300", "--trainer.log_every_n_steps", "10"]


@pytest.fixture
def finished_run(run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """One 300-step SGD fit: its run folder and what it printed."""
    run_cli("fit", *STEPS, "--model.optimizer", "rmsprop")
    return tmp_path / "lightning_logs" / "version_0", capsys.readouterr().out


def load(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_scalars_agree_with_the_console(finished_run: tuple[Path, str]) -> None:
    run, out = finished_run
    events = load(run)
    tags = set(events.Tags()["scalars"])
    expected = {"train/loss", "train/gap_to_optimum", "train/lr", "optimum/loss", "final/loss"}
    expected |= {f"{kind}/{n}" for kind in ("coef", "optimum") for n in "abcd"}
    expected |= {f"val/{m}" for m in ("sse", "mse", "mae", "r2")}
    assert expected <= tags
    # The last training loss logged is the one the console printed last ("299 <loss>").
    last_line = [line.split() for line in out.splitlines() if re.match(r"^\d+ ", line)][-1]
    loss = events.Scalars("train/loss")[-1]
    assert loss.step == int(last_line[0]) == 299
    assert loss.value == pytest.approx(float(last_line[1]), rel=1e-6)
    # The coefficient curves end on the numbers of the Result line.
    result = re.search(r"^Result: y = (\S+) \+ (\S+) x \+ (\S+) x\^2 \+ (\S+) x\^3$", out, re.M)
    assert result is not None
    for name, printed in zip("abcd", result.groups(), strict=True):
        assert events.Scalars(f"coef/{name}")[-1].value == pytest.approx(float(printed), rel=1e-6, abs=1e-9)
    # The gap is the loss minus the closed-form floor, logged at the same steps.
    floor = events.Scalars("optimum/loss")[-1].value
    assert floor == pytest.approx(8.8171654, rel=1e-6)
    gaps = {e.step: e.value for e in events.Scalars("train/gap_to_optimum")}
    for e in events.Scalars("train/loss"):
        assert gaps[e.step] == pytest.approx(e.value - floor, rel=1e-5)
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([1e-3] * 30)
    assert len(events.Scalars("val/mse")) == 3  # validation every 100 steps


def test_figure_equation_layout_and_config(finished_run: tuple[Path, str]) -> None:
    run, out = finished_run
    events = load(run)
    images = events.Images("fit")
    assert [image.step for image in images] == [100, 200, 300]
    assert images[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[-1].width >= 300
    equation = events.Tensors("equation/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert f"Result: {equation}" in out  # the equation logged at the last validation is the final one
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    for name in "abcd":
        assert charts[name] == [f"coef/{name}", f"optimum/{name}"]
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "optimizer: rmsprop" in config and "max_steps: 300" in config


def test_hparams_tab_has_real_hyperparameters_and_final_metrics(finished_run: tuple[Path, str]) -> None:
    run, out = finished_run
    accumulator = plugin_event_accumulator.EventAccumulator(str(run))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hparams = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    assert hparams["optimizer"] == "rmsprop" and hparams["lr"] == pytest.approx(1e-3)
    assert hparams["degree"] == 3 and hparams["num_samples"] == 2000 and hparams["seed"] == 1234
    assert hparams["precision"] == "32-true"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"final/loss", "final/gap_to_optimum"}
    events = load(run)
    final_loss = events.Scalars("final/loss")[-1].value
    floor = events.Scalars("optimum/loss")[-1].value
    assert events.Scalars("final/gap_to_optimum")[-1].value == pytest.approx(final_loss - floor, rel=1e-6)
    # The final loss is the one at the printed coefficients, as the parity table computes it.
    table_row = re.search(r"^lightning\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    assert table_row is not None and final_loss == pytest.approx(float(table_row.group(5)), rel=1e-5)


def test_help_explains_every_litpoly_option() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "fit", "--help"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    blocks = re.split(r"\n  --", result.stdout)
    own = [b for b in blocks if re.match(r"(model|data|console|parity|tensorboard)\.\w+ ", b)]
    assert len(own) >= 14
    for block in own:
        words = re.sub(r"\(type: .*?default: .*?\)", "", " ".join(block.split()[2:]), flags=re.S)
        assert len(words.split()) >= 3, f"--{block.split()[0]} has no explanation"
        assert "default:" in block


def test_a_default_run_prints_no_warnings(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "fit", "--trainer.max_steps", "200"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert not re.search(r"warn|deprecat|Tip:", output, re.I), output[-2000:]
    assert "Result: y = " in output and "Verdict: MATCH" in output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_tensorboard_server_serves_the_run(finished_run: tuple[Path, str]) -> None:
    """The real client: `tensorboard --logdir` on 127.0.0.1, asked over HTTP for the run's scalars."""
    run, _ = finished_run
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(run.parent), "--host", "127.0.0.1",
         "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data"

    def get(path: str) -> object:
        with urllib.request.urlopen(base + path, timeout=10) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                tags = get("/plugin/scalars/tags")
                if "version_0" in tags and "train/loss" in tags["version_0"]:  # type: ignore[operator,index]
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "tensorboard did not serve the run in 90 s"
            time.sleep(0.5)
        assert {"train/loss", "val/mse", "coef/a", "optimum/a"} <= set(tags["version_0"])  # type: ignore[index]
        series = get("/plugin/scalars/scalars?run=version_0&tag=train/loss")
        events = load(run).Scalars("train/loss")
        assert [(step, value) for _, step, value in series] == [  # type: ignore[union-attr,misc]
            (e.step, pytest.approx(e.value)) for e in events
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
