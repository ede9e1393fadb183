"""The command line as a user meets it: fit, validate, test, predict, configs and bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, RunCLI

from litpoly.cli import cli_main

QUICK = ["--trainer.max_steps", "30", "--trainer.val_check_interval", "10", "--console.every_n_steps", "10"]
QUICK += ["--trainer.log_every_n_steps", "10"]


def run_dir(tmp_path: Path, version: int = 0) -> Path:
    return tmp_path / "lightning_logs" / f"version_{version}"


def test_fit_writes_a_complete_run_folder(run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = run_cli("fit", *QUICK, progress_bar=True)
    out = capsys.readouterr()
    folder = run_dir(tmp_path)
    # Periodic checkpoints come every 500 steps; last.ckpt always holds the final state.
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["last.ckpt"]
    assert (folder / "config.yaml").is_file() and (folder / "hparams.yaml").is_file()
    assert list(folder.glob("events.out.tfevents.*"))
    assert "Epoch 0: 100%" in out.out  # Lightning's progress bar
    assert f"Run folder: {folder} (seed 1234)" in out.out
    # The seed's lines: "9 <loss>", "19 <loss>", "29 <loss>", then the Result line with the learned numbers.
    steps = [line.split()[0] for line in out.out.splitlines() if line[:1].isdigit()]
    assert steps == ["9", "19", "29"]
    a, b, c, d = cli.model.coefficients.tolist()
    assert f"Result: y = {a} + {b} x + {c} x^2 + {d} x^3" in out.out
    # The checkpoint holds what the run ended with, and where it started.
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["coefficients"].tolist() == [a, b, c, d]
    assert torch.equal(state["initial_coefficients"], cli.model.initial_coefficients)


def test_second_run_gets_the_next_version(run_cli: RunCLI, tmp_path: Path) -> None:
    run_cli("fit", *QUICK)
    run_cli("fit", *QUICK)
    assert (run_dir(tmp_path, 1) / "config.yaml").is_file()
    # Same config and seed: the same result, run after run.
    first, second = (
        torch.load(run_dir(tmp_path, v) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]["coefficients"]
        for v in (0, 1)
    )
    assert torch.equal(first, second)


def test_flags_reach_the_model_and_data(run_cli: RunCLI) -> None:
    cli = run_cli(
        "fit", *QUICK, "--model.optimizer", "rmsprop", "--model.degree", "2", "--model.init_coefficients",
        "[0.1, -0.2, 0.3]", "--data.num_samples", "50", "--data.x_min", "-1", "--data.x_max", "2",
    )  # fmt: skip
    assert cli.model.lr == 1e-3 and type(cli.trainer.optimizers[0]).__name__ == "RMSprop"
    assert cli.model.initial_coefficients.tolist() == pytest.approx([0.1, -0.2, 0.3])
    assert cli.datamodule.train_x.tolist() == pytest.approx(np.linspace(-1, 2, 50).tolist())
    assert run_cli("fit", *QUICK, "--model.optimizer", "rmsprop", "--model.lr", "0.01").model.lr == 0.01


def test_seed_changes_the_random_start(run_cli: RunCLI) -> None:
    first = run_cli("fit", *QUICK).model.initial_coefficients
    other = run_cli("fit", *QUICK, "--seed_everything", "7").model.initial_coefficients
    assert not torch.equal(first, other)


def test_float64_precision_trains_in_float64(run_cli: RunCLI) -> None:
    cli = run_cli("fit", *QUICK, "--trainer.precision", "64-true", "--trainer.accelerator", "cpu")
    assert cli.model.coefficients.dtype == torch.float64


def test_validate_test_predict_from_a_checkpoint(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli("fit", *QUICK)
    ckpt = str(run_dir(tmp_path) / "checkpoints" / "last.ckpt")
    w = torch.load(ckpt, weights_only=True)["state_dict"]["coefficients"].double().numpy()
    # Witness: the metrics computed with numpy on the midpoints between the 2000 training points.
    grid = np.linspace(-np.pi, np.pi, 2000)
    x = (grid[:-1] + grid[1:]) / 2
    err = np.polynomial.polynomial.polyval(x, w) - np.sin(x)
    expected = {
        "sse": np.sum(err**2),
        "mse": np.mean(err**2),
        "mae": np.mean(np.abs(err)),
        "r2": 1 - np.sum(err**2) / np.sum((np.sin(x) - np.sin(x).mean()) ** 2),
    }
    for stage, prefix in (("validate", "val"), ("test", "test")):
        metrics = run_cli(stage, "--ckpt_path", ckpt).trainer.callback_metrics
        assert "Run folder: " in capsys.readouterr().out
        for name, value in expected.items():
            assert metrics[f"{prefix}/{name}"].item() == pytest.approx(value, rel=1e-5), (stage, name)

    capsys.readouterr()
    run_cli("predict", "--ckpt_path", ckpt)
    csv = run_dir(tmp_path, 3) / "predictions.csv"
    assert f"written to {csv} (figure: {csv.with_suffix('.png')})" in capsys.readouterr().out
    assert csv.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = np.loadtxt(csv, delimiter=",", skiprows=1)
    assert csv.read_text().splitlines()[0] == "x,target,prediction"
    np.testing.assert_allclose(table[:, 0], x, atol=1e-6)
    np.testing.assert_allclose(table[:, 1], np.sin(table[:, 0]), atol=1e-6)
    np.testing.assert_allclose(table[:, 2], np.polynomial.polynomial.polyval(table[:, 0], w), atol=1e-5)


def test_print_config_round_trips(run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def printed(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", *args, "--print_config"])
        assert exit_info.value.code in (0, None)
        return capsys.readouterr().out

    text = printed("--config", str(REPO / "configs" / "rmsprop.yaml"), "--data.num_samples", "300")
    config = yaml.safe_load(text)
    assert config["model"]["optimizer"] == "rmsprop" and config["data"]["num_samples"] == 300
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert printed("--config", str(path)) == text
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("name", ["sgd", "rmsprop"])
def test_shipped_configs_hold_only_model_settings(name: str) -> None:
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    assert config == {"model": {"optimizer": name, "lr": {"sgd": 1e-6, "rmsprop": 1e-3}[name]}}


BAD_INPUT = [
    (["--model.optimizer", "adam"], "model.optimizer", "'sgd', 'rmsprop'"),
    (["--model.lr", "0"], "model.lr", "positive"),
    (["--model.lr=-1e-3"], "model.lr", "positive"),
    (["--data.num_samples", "3"], "data.num_samples", ">= `model.degree` + 1 = 4"),
    (["--data.num_samples", "2", "--model.degree", "1"], "data.num_samples", ">= 3"),
    (["--data.max_eval_samples", "1"], "data.max_eval_samples", ">= 2"),
    (["--model.degree", "5", "--data.num_samples", "5"], "data.num_samples", "= 6"),
    (["--data.x_min", "2", "--data.x_max", "1"], "data.x_min", "<"),
    (["--data.x_min", "1", "--data.x_max", "1"], "data.x_min", "<"),
    (["--model.degree=-1"], "model.degree", "v>=0"),
    (["--model.init_coefficients", "[1, 2, 3]"], "model.init_coefficients", "4 finite numbers"),
    (["--trainer.max_steps", "0"], "trainer.max_steps", "positive"),
    (["--trainer.max_steps=-1"], "trainer.max_steps", "positive"),
    (["--config", "missing.yaml"], "config", "does not exist"),
    (["--config", "malformed.yaml"], "config", "while parsing"),
    (["--config", "unknown_key.yaml"], "model.foo", "does not accept"),
    (["--model.foo", "1"], "--model.foo", "unrecognized"),
    (["--data.num_samples", "abc"], "data.num_samples", "PositiveInt"),
    (["--model.lr", "nan"], "model.lr", "nan"),
    (["--model.lr", "inf"], "model.lr", "Given value: inf"),
    (["--data.x_max", "inf"], "data.x_max", "Got value: inf"),
    (["--data.x_min", "0", "--data.x_max", "0"], "data.x_min", "<"),
    (["--trainer.precision", "8"], "trainer.precision", "64-true"),
    pytest.param(
        ["--trainer.accelerator", "gpu"],
        "Trainer",
        "gpu",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
]


@pytest.mark.parametrize(("args", "setting", "allowed"), BAD_INPUT)
def test_bad_input_is_one_line_and_writes_nothing(
    args: list[str], setting: str, allowed: str, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "malformed.yaml").write_text("model:\n  lr: [1e-3\n")
    (tmp_path / "unknown_key.yaml").write_text("model:\n  foo: 1\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args)
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert setting in lines[0] and allowed in lines[0]
    assert not (tmp_path / "lightning_logs").exists()


def test_the_script_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    """The real entry point, as a user runs it: exit status and stderr of a separate process."""
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), "fit", "--model.optimizer", "adam"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: Parser key \"model.optimizer\": Expected a typing.Literal['sgd', 'rmsprop']. Got value: adam"
    ]
    assert not (tmp_path / "lightning_logs").exists()


def test_mini_batches_are_shuffled_under_the_run_seed(run_cli: RunCLI) -> None:
    quick = ["--trainer.max_steps", "40", "--trainer.log_every_n_steps", "10", "--data.batch_size", "256"]
    runs = [run_cli("fit", *quick).model for _ in range(2)]
    assert torch.equal(runs[0].coefficients, runs[1].coefficients)  # same seed, same batches, same result
    start = str(runs[0].initial_coefficients.tolist())
    same_start = run_cli("fit", *quick, "--model.init_coefficients", start).model
    other_order = run_cli("fit", *quick, "--model.init_coefficients", start, "--seed_everything", "7").model
    # Same start, another seed: only the order of the mini-batches differs, and so does the result.
    assert not torch.equal(other_order.coefficients, same_start.coefficients)
