"""Presets (configs/presets/*.yaml), the best checkpoint and early stopping, for every problem."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import REPO, Problem, RunCLI, load_checkpoint, run_folder
from litpoly.cli import DEFAULT_CONFIG
from litpoly.cli import run as run_command

PRESETS = REPO / "configs" / "presets"
#: What each preset sets, as --print_config shows it.
EXPECTED = {
    "debug": {"trainer.fast_dev_run": True},
    "profile": {"trainer.profiler.class_path": "lightning.pytorch.profilers.SimpleProfiler"},
    "profile_advanced": {"trainer.profiler.class_path": "lightning.pytorch.profilers.AdvancedProfiler"},
    "ddp_cpu": {"trainer.strategy": "ddp", "trainer.devices": 2, "trainer.accelerator": "cpu"},
    "gpu": {"trainer.accelerator": "gpu", "trainer.devices": 1},
    "ddp_gpu_multinode": {"trainer.num_nodes": 2, "trainer.devices": 4, "trainer.strategy": "ddp"},
    "float64": {"trainer.precision": "64-true"},
    "bf16_mixed": {"trainer.precision": "bf16-mixed"},
    "early_stopping": {"early_stopping.patience": 3},
}


def test_every_preset_is_tested() -> None:
    assert {p.stem for p in PRESETS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_presets_parse_for_every_problem(
    preset: str, problem: Problem, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])  # LightningCLI warns when pytest's own argv is there too
    with pytest.raises(SystemExit):
        run_command(["fit", *problem.select, "--config", str(PRESETS / f"{preset}.yaml"), "--print_config"],
                 default_config=DEFAULT_CONFIG)  # fmt: skip
    config = yaml.safe_load(capsys.readouterr().out)
    for key, value in EXPECTED[preset].items():
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == value, (preset, key)


def preset(name: str) -> list[str]:
    return ["--config", str(PRESETS / f"{name}.yaml")]


def test_debug_trains_a_step_and_writes_nothing(problem: Problem, run_cli: RunCLI, tmp_path: Path) -> None:
    cli = run_cli("fit", *problem.select, *preset("debug"))
    assert cli.trainer.global_step == 1
    assert list(tmp_path.iterdir()) == []  # no run folder, no checkpoint: fast_dev_run writes nothing


@pytest.mark.parametrize("name", ["profile", "profile_advanced"])
def test_profile_reports_land_in_the_run_folder(name: str, problem: Problem, run_cli: RunCLI, tmp_path: Path) -> None:
    run_cli("fit", *problem.select, *problem.quick, *preset(name))
    report = run_folder(tmp_path) / f"fit-{name}.txt"
    text = report.read_text()
    assert "run_training_batch" in text or "training_step" in text  # the hooks it timed


@pytest.mark.parametrize("name", ["float64", "bf16_mixed"])
def test_precision_presets_train(name: str, problem: Problem, run_cli: RunCLI) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick, *preset(name))
    weights = [p for p in cli.model.parameters()]
    assert all(p.dtype == (torch.float64 if name == "float64" else torch.float32) for p in weights)
    assert cli.trainer.global_step == problem.steps and all(torch.isfinite(p).all() for p in weights)


# ddp_cpu runs in tests/run/test_ddp.py, which checks that its two processes end where one process does.


def test_the_best_checkpoint_holds_the_best_validation(problem: Problem, run_cli: RunCLI, tmp_path: Path) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick)
    monitor = cli.config["fit"]["best"]["monitor"]
    events = EventAccumulator(str(run_folder(tmp_path)), size_guidance={"scalars": 0})
    events.Reload()
    best = min(e.value for e in events.Scalars(monitor))  # what TensorBoard recorded at each validation
    saved = load_checkpoint(run_folder(tmp_path) / "checkpoints" / "best.ckpt")
    callback = next(v for k, v in saved["callbacks"].items() if f"'monitor': '{monitor}'" in k)
    assert float(callback["best_model_score"]) == pytest.approx(best, rel=1e-6)
    # --ckpt_path best evaluates it again, to the same score.
    again = run_cli("validate", *problem.select, "--ckpt_path", "best").trainer.callback_metrics[monitor]
    assert float(again) == pytest.approx(best, rel=1e-5)


def test_early_stopping_ends_a_run_that_stops_improving(
    run_cli: RunCLI, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """RMSprop on the example jitters by ~lr around the optimum: its held-out loss stops improving, and the
    run ends there, its best model kept. (Lightning says why through its logger, on the console's stderr.)"""
    lightning_logger = logging.getLogger("lightning.pytorch")  # it does not propagate to pytest's root handler
    lightning_logger.addHandler(caplog.handler)
    try:
        cli = run_cli("fit", "--config", str(REPO / "configs" / "rmsprop.yaml"), *preset("early_stopping"))
    finally:
        lightning_logger.removeHandler(caplog.handler)
    out = caplog.text
    assert 0 < cli.trainer.global_step < 2400
    line = re.search(r"Monitored metric val/sse did not improve in the last 3 records\. Best score: (\S+)\. "
                     r"Signaling Trainer to stop\.$", out, re.M)  # fmt: skip
    assert line is not None, out[-2000:]
    best = load_checkpoint(run_folder(tmp_path) / "checkpoints" / "best.ckpt")
    last = load_checkpoint(run_folder(tmp_path) / "checkpoints" / "last.ckpt")
    assert best["global_step"] < last["global_step"]
    scores = [float(run_cli("validate", "--ckpt_path", str(run_folder(tmp_path) / "checkpoints" / f"{name}.ckpt"))
                    .trainer.callback_metrics["val/sse"]) for name in ("best", "last")]  # fmt: skip
    assert scores[0] < scores[1] and scores[0] == pytest.approx(float(line.group(1)), rel=1e-3)


def test_early_stopping_needs_a_metric(run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *preset("early_stopping"), "--best.monitor", "null")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "error: Expected `best.monitor` to name a logged metric: `early_stopping.patience` stops on the metric the "
        "best checkpoint ranks models by"
    ]
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_metric_the_model_does_not_log_is_one_line(
    problem: Problem, early_stopping: bool, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found at the first validation (the sanity check's, where there is one), before any checkpoint is written:
    one line naming the metrics there are, and no run folder left behind."""
    extra = preset("early_stopping") if early_stopping else []
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *problem.select, *problem.quick, *extra, "--best.monitor", "val/typo")
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        r"error: Expected `best\.monitor` to name a metric the model logs \((\S+, )*val/\S+\), got 'val/typo'", lines[0]
    ), lines
    assert not (tmp_path / "lightning_logs").exists()
