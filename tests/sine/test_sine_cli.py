"""The example's settings on the command line: its configs, its one-line errors, its predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers import REPO, SINE, RunCLI, load_checkpoint, run_folder
from litpoly.cli import DEFAULT_CONFIG
from litpoly.cli import run as run_command


def test_shipped_configs_change_only_what_they_say(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/rmsprop.yaml on top of the default config: the optimizer and its lr change, nothing else."""

    def resolved(*args: str) -> dict[str, object]:
        with pytest.raises(SystemExit):
            run_command(["fit", *args, "--print_config"], default_config=DEFAULT_CONFIG)
        return yaml.safe_load(capsys.readouterr().out)  # type: ignore[no-any-return]

    default, rmsprop = resolved(), resolved("--config", str(REPO / "configs" / "rmsprop.yaml"))
    assert rmsprop["model"]["init_args"] == {**default["model"]["init_args"], "optimizer": "rmsprop", "lr": 1e-3}  # type: ignore[index]
    assert {k: v for k, v in rmsprop.items() if k != "model"} == {k: v for k, v in default.items() if k != "model"}
    sgd = resolved("--config", str(REPO / "configs" / "sgd.yaml"))
    assert sgd["model"]["init_args"] == {**default["model"]["init_args"], "lr": 1e-6}  # type: ignore[index]


def test_flags_reach_the_model_and_data(run_cli: RunCLI) -> None:
    cli = run_cli(
        "fit", *SINE.quick, "--model.optimizer", "rmsprop", "--model.degree", "2", "--model.init_coefficients",
        "[0.1, -0.2, 0.3]", "--data.num_samples", "50", "--data.x_min", "-1", "--data.x_max", "2",
    )  # fmt: skip
    assert cli.model.lr == 1e-3 and type(cli.trainer.optimizers[0]).__name__ == "RMSprop"
    assert cli.model.initial_coefficients.tolist() == [0.1, -0.2, 0.3]
    assert cli.datamodule.train_x.tolist() == pytest.approx(np.linspace(-1, 2, 50).tolist())
    assert run_cli("fit", *SINE.quick, "--model.optimizer", "rmsprop", "--model.lr", "0.01").model.lr == 0.01


def test_a_full_batch_epoch_is_one_step(run_cli: RunCLI) -> None:
    cli = run_cli("fit", "--trainer.max_epochs", "3", "--trainer.max_steps", "-1")
    assert cli.trainer.global_step == 3 and cli.trainer.current_epoch == 3


def test_predictions_are_the_polynomial_at_the_midpoints(run_cli: RunCLI, tmp_path: Path) -> None:
    run_cli("fit", *SINE.quick)
    ckpt = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    run_cli("predict", "--ckpt_path", str(ckpt))
    csv = run_folder(tmp_path, 1) / "predictions.csv"
    assert csv.read_text().splitlines()[0] == "x,target,prediction"
    table = np.loadtxt(csv, delimiter=",", skiprows=1)
    grid = np.linspace(-np.pi, np.pi, 2000)
    np.testing.assert_allclose(table[:, 0], (grid[:-1] + grid[1:]) / 2, atol=1e-6)
    np.testing.assert_allclose(table[:, 1], np.sin(table[:, 0]), atol=1e-6)
    w = load_checkpoint(ckpt)["state_dict"]["coefficients"].double().numpy()
    np.testing.assert_allclose(table[:, 2], np.polynomial.polynomial.polyval(table[:, 0], w), atol=1e-5)
    assert (csv.parent / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BAD_INPUT = [
    (["--model.optimizer", "adam"], "error: Parser key \"model.optimizer\": Expected a typing.Literal['sgd', "
     "'rmsprop']. Got value: adam"),
    (["--model.lr", "0"], "error: Expected `model.lr` to be a positive finite number (or null for the default), "
     "got 0.0"),
    (["--model.lr=-1e-3"], "error: Expected `model.lr` to be a positive finite number"),
    (["--model.lr", "nan"], "error: Parser key \"model.lr\": Expected a <class 'float'>. Got value: nan"),
    (["--model.lr", "abc"], "error: Parser key \"model.lr\": Expected a <class 'float'>. Got value: abc"),
    (["--data.num_samples", "3"], "error: Expected `data.num_samples` >= `model.degree` + 1 = 4 (a degree-3 "
     "polynomial needs that many points), got 3"),
    (["--data.num_samples", "2", "--model.degree", "1"], "error: Expected `data.num_samples` >= 3"),
    (["--data.max_eval_samples", "1"], "error: Expected `data.max_eval_samples` >= 2"),
    (["--data.x_min", "2", "--data.x_max", "1"], "error: Expected `data.x_min` < `data.x_max` (both finite), got 2.0"),
    (["--data.x_max", "inf"], "error: Parser key \"data.x_max\": Expected a <class 'float'>. Got value: inf"),
    (["--data.num_samples", "abc"], "error: Parser key \"data.num_samples\": Not of type PositiveInt"),
    (["--data.batch_size", "0"], "error: Parser key \"data.batch_size\": Not of type PositiveInt"),
    (["--model.degree=-1"], "error: Parser key \"model.degree\": Not of type NonNegativeInt"),
    (["--model.init_coefficients", "[1, 2, 3]"], "error: Expected `model.init_coefficients` to be 4 finite numbers"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "line"), BAD_INPUT)
def test_bad_settings_are_one_line_and_write_nothing(
    args: list[str], line: str, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *args)
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), lines
    assert not (tmp_path / "lightning_logs").exists()
