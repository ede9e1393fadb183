"""The command line as a user meets it, for both problems: fit, validate, test, predict, configs, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import (
    DEFAULT_CONFIG,
    REPO,
    SINE,
    TESTS,
    TWOMOONS,
    Problem,
    RunCLI,
    load_checkpoint,
    run_folder,
    run_train,
)
from litpoly.cli import cli_main, given_keys, names_a_class


def numpy_metrics(problem: Problem, state: dict[str, torch.Tensor], x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The evaluation metrics of the checkpoint's weights on ``(x, y)``, computed with numpy alone."""
    if problem is SINE:
        err = np.polynomial.polynomial.polyval(x, state["coefficients"].double().numpy()) - y
        return {
            "sse": np.sum(err**2),
            "mse": np.mean(err**2),
            "mae": np.mean(np.abs(err)),
            "r2": 1 - np.sum(err**2) / np.sum((y - y.mean()) ** 2),
        }
    w = {k: v.double().numpy() for k, v in state.items()}
    hidden = np.tanh(np.tanh(x @ w["net.0.weight"].T + w["net.0.bias"]) @ w["net.2.weight"].T + w["net.2.bias"])
    logits = (hidden @ w["net.4.weight"].T + w["net.4.bias"])[:, 0]
    loss = np.mean(np.logaddexp(0.0, logits) - y * logits)  # binary cross-entropy of the logits
    return {"loss": loss, "acc": np.mean((logits > 0) == (y == 1))}


def test_fit_writes_a_complete_run_folder(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick, progress_bar=True)
    out = capsys.readouterr()
    folder = run_folder(tmp_path)
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert (folder / "config.yaml").is_file() and (folder / "hparams.yaml").is_file()
    assert list(folder.glob("events.out.tfevents.*"))
    assert "Epoch 0:" in out.out  # Lightning's progress bar
    assert f"Run folder: {folder} (seed 1234, 32-true on cpu)" in out.out
    # The console's loss lines: the 0-based step and the loss, every `console.every_n_steps` steps.
    every = int(problem.quick[problem.quick.index("--console.every_n_steps") + 1])
    steps = [int(line.split()[0]) for line in out.out.splitlines() if line[:1].isdigit()]
    assert steps == list(range(every - 1, problem.steps, every))
    # The checkpoint holds what the run ended with: its step, and the model's weights bit for bit.
    checkpoint = load_checkpoint(folder / "checkpoints" / "last.ckpt")
    assert checkpoint["global_step"] == cli.trainer.global_step == problem.steps
    for key, value in cli.model.state_dict().items():
        assert torch.equal(checkpoint["state_dict"][key], value), key


def test_the_same_command_gives_the_same_run(problem: Problem, run_cli: RunCLI, tmp_path: Path) -> None:
    run_cli("fit", *problem.select, *problem.quick)
    run_cli("fit", *problem.select, *problem.quick)
    first, second = (load_checkpoint(run_folder(tmp_path, v) / "checkpoints" / "last.ckpt") for v in (0, 1))
    for key in first["state_dict"]:
        assert torch.equal(first["state_dict"][key], second["state_dict"][key]), key
    assert yaml.safe_load((run_folder(tmp_path, 1) / "config.yaml").read_text())["seed_everything"] == 1234


def test_validate_test_predict_from_a_checkpoint(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick)
    ckpt = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)["state_dict"]
    x, y = (t.double().numpy() for t in cli.trainer.val_dataloaders.tensors)  # the held-out points
    expected = numpy_metrics(problem, state, x, y)
    for stage, prefix in (("validate", "val"), ("test", "test")):
        metrics = run_cli(stage, *problem.select, "--ckpt_path", str(ckpt)).trainer.callback_metrics
        assert "Run folder: " in capsys.readouterr().out
        for name, value in expected.items():
            assert metrics[f"{prefix}/{name}"].item() == pytest.approx(value, rel=1e-5, abs=1e-7), (stage, name)

    capsys.readouterr()
    run_cli("predict", *problem.select, "--ckpt_path", str(ckpt))
    csv = run_folder(tmp_path, 3) / "predictions.csv"
    assert f"Predictions for {len(y)} samples written to {csv}" in capsys.readouterr().out
    header = csv.read_text().splitlines()[0].split(",")
    table = np.loadtxt(csv, delimiter=",", skiprows=1)
    column = {name: table[:, i] for i, name in enumerate(header)}
    np.testing.assert_allclose(column["target"], y, atol=1e-7)
    if problem is SINE:
        assert header == ["x", "target", "prediction"]
        np.testing.assert_allclose(column["x"], x, atol=1e-6)
        w = state["coefficients"].double().numpy()
        np.testing.assert_allclose(column["prediction"], np.polynomial.polynomial.polyval(x, w), atol=1e-5)
        assert (csv.parent / "predictions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert header == ["x_0", "x_1", "target", "probability"]
        np.testing.assert_allclose(np.stack([column["x_0"], column["x_1"]], axis=1), x, atol=1e-6)
        accuracy = np.mean((column["probability"] > 0.5) == (column["target"] == 1))
        assert accuracy == pytest.approx(expected["acc"])


@pytest.mark.parametrize("problem", [SINE, TWOMOONS], ids=str)
def test_print_config_round_trips(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def printed(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["fit", *args, "--print_config"], default_config=DEFAULT_CONFIG)
        assert exit_info.value.code in (0, None)
        return capsys.readouterr().out

    text = printed(*problem.select, "--data.num_samples", "300")
    config = yaml.safe_load(text)
    assert config["data"]["init_args"]["num_samples"] == 300
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert printed("--config", str(path)) == text
    assert not (tmp_path / "lightning_logs").exists()


def test_shipped_configs_change_only_what_they_say(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    """configs/rmsprop.yaml on top of the default config: the optimizer and its lr change, nothing else."""

    def resolved(*args: str) -> dict[str, object]:
        with pytest.raises(SystemExit):
            cli_main(["fit", *args, "--print_config"], default_config=DEFAULT_CONFIG)
        return yaml.safe_load(capsys.readouterr().out)  # type: ignore[no-any-return]

    default, rmsprop = resolved(), resolved("--config", str(REPO / "configs" / "rmsprop.yaml"))
    assert rmsprop["model"]["init_args"] == {**default["model"]["init_args"], "optimizer": "rmsprop", "lr": 1e-3}  # type: ignore[index]
    assert {k: v for k, v in rmsprop.items() if k != "model"} == {k: v for k, v in default.items() if k != "model"}


def test_a_config_with_its_own_classes_does_not_inherit_the_default_run(run_cli: RunCLI) -> None:
    """tests/twomoons.yaml names its classes: none of the sine example's settings (2000 points, 2400 steps,
    validation every 100 steps, a checkpoint every 500) reaches it, even where names coincide."""
    cli = run_cli("fit", *TWOMOONS.select, "--trainer.max_epochs", "1")
    assert cli.datamodule.hparams["num_samples"] == 1000  # its own default, not the sine's 2000
    assert cli.trainer.max_steps == -1 and cli.trainer.val_check_interval == 1.0
    assert cli.trainer.checkpoint_callback._every_n_train_steps == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], False),
        (["--model.optimizer", "rmsprop", "--config", "configs/rmsprop.yaml"], False),
        (["--model", "pkg.Model"], True),
        (["--data=pkg.Data"], True),
        (["--config", "tests/twomoons.yaml"], True),
        (["-c", "tests/twomoons.yaml"], True),
        (["--config=configs/default.yaml"], True),
    ],
)
def test_which_commands_name_their_own_classes(
    args: list[str], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)
    assert names_a_class(args) is expected


def test_given_settings_are_found_in_flags_and_config_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    args = ["--model.degree", "5", "--model.init_args.lr=0.1", "--config", "configs/rmsprop.yaml", "--data.x_min", "0"]
    assert given_keys(args, "model") == {"degree", "lr", "optimizer"}
    assert given_keys(["--config", "tests/twomoons.yaml"], "model") == {"hidden", "lr"}
    assert given_keys(args, "data") == {"x_min"}


@pytest.mark.parametrize("problem", [SINE, TWOMOONS], ids=str)
def test_epochs_and_steps_both_count(problem: Problem, run_cli: RunCLI) -> None:
    """An epoch is one pass over the training data; a run counts in either, whichever its config uses."""
    per_epoch = {SINE.name: 4, TWOMOONS.name: 7}[problem.name]  # sine: 2000 points in batches of 500
    batches = ["--data.batch_size", "500"] if problem is SINE else []
    by_epochs = run_cli("fit", *problem.select, *batches, "--trainer.max_epochs", "3", "--trainer.max_steps", "-1")
    assert by_epochs.trainer.global_step == 3 * per_epoch and by_epochs.trainer.current_epoch == 3
    by_steps = run_cli("fit", *problem.select, *batches, "--trainer.max_steps", "10", "--trainer.max_epochs", "null")
    assert by_steps.trainer.global_step == 10
    full_batch = run_cli("fit", *problem.select, "--trainer.max_epochs", "2", "--trainer.max_steps", "-1")
    assert full_batch.trainer.global_step == 2 * {SINE.name: 1, TWOMOONS.name: 7}[problem.name]


BAD_INPUT = [
    (SINE, ["--model.optimizer", "adam"], "model.optimizer", "'sgd', 'rmsprop'"),
    (SINE, ["--model.lr", "0"], "model.lr", "positive"),
    (SINE, ["--model.lr=-1e-3"], "model.lr", "positive"),
    (SINE, ["--model.lr", "nan"], "model.lr", "nan"),
    (SINE, ["--model.lr", "abc"], "model.lr", "float"),
    (SINE, ["--data.num_samples", "3"], "data.num_samples", ">= `model.degree` + 1 = 4"),
    (SINE, ["--data.num_samples", "2", "--model.degree", "1"], "data.num_samples", ">= 3"),
    (SINE, ["--data.max_eval_samples", "1"], "data.max_eval_samples", ">= 2"),
    (SINE, ["--data.x_min", "2", "--data.x_max", "1"], "data.x_min", "<"),
    (SINE, ["--data.x_max", "inf"], "data.x_max", "Got value: inf"),
    (SINE, ["--data.num_samples", "abc"], "data.num_samples", "PositiveInt"),
    (SINE, ["--data.batch_size", "0"], "data.batch_size", "v>0"),
    (SINE, ["--model.degree=-1"], "model.degree", "v>=0"),
    (SINE, ["--model.init_coefficients", "[1, 2, 3]"], "model.init_coefficients", "4 finite numbers"),
    (SINE, ["--model.foo", "1"], "sinefit.PolynomialRegressor", "'foo' is not accepted"),
    (SINE, ["--model", "nowhere.Model"], "model", "No module named 'nowhere'"),
    (SINE, ["--config", "missing.yaml"], "config", "does not exist"),
    (SINE, ["--config", "malformed.yaml"], "config", "while parsing"),
    (SINE, ["--trainer.precision", "8"], "trainer.precision", "64-true"),
    (SINE, ["--guard.divergence_threshold", "nan"], "guard.divergence_threshold", "nan"),
    (TWOMOONS, ["--model.hidden", "0"], "model.hidden", "PositiveInt"),
    (TWOMOONS, ["--model.lr", "-1"], "model.lr", "PositiveFloat"),
    (TWOMOONS, ["--data.val_fraction", "1.5"], "data.val_fraction", "between 0 and 1"),
    (TWOMOONS, ["--data.noise_level", "1"], "twomoons.TwoMoonsDataModule", "'noise_level' is not accepted"),
    pytest.param(
        SINE,
        ["--trainer.accelerator", "gpu"],
        "Trainer",
        "gpu",
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU"),
    ),
]


@pytest.mark.parametrize(("problem", "args", "setting", "allowed"), BAD_INPUT, ids=str)
def test_bad_input_is_one_line_and_writes_nothing(
    problem: Problem,
    args: list[str],
    setting: str,
    allowed: str,
    run_cli: RunCLI,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "malformed.yaml").write_text("model:\n  lr: [1e-3\n")
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *problem.select, *args)
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    lines = (out.out + out.err).splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert setting in lines[0] and allowed in lines[0], lines[0]
    assert not (tmp_path / "lightning_logs").exists()


def test_the_script_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    """The real entry point, as a user runs it: exit status and stderr of a separate process."""
    result = run_train(tmp_path, "fit", "--model.optimizer", "adam", timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: Parser key \"model.optimizer\": Expected a typing.Literal['sgd', 'rmsprop']. Got value: adam"
    ]
    assert not (tmp_path / "lightning_logs").exists()


def test_the_second_problem_runs_through_the_same_script(tmp_path: Path) -> None:
    """tests/twomoons.yaml, as the README's "Start your own project" runs it: the run layer unchanged."""
    result = run_train(tmp_path, "fit", "--config", str(TESTS / "twomoons.yaml"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"Run folder: {run_folder(tmp_path)}" in result.stdout
    state = load_checkpoint(run_folder(tmp_path) / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 30 * 7  # 30 epochs of 7 mini-batches
