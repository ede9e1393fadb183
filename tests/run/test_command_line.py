"""The command line as a user meets it, for both problems: fit, validate, test, predict, configs, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import ArgumentError

from helpers import (
    DIGITS,
    PROBLEMS,
    REPO,
    TWOMOONS,
    Problem,
    RunCLI,
    held_out,
    load_checkpoint,
    run_folder,
    run_train,
)
from litpoly.cli import DEFAULT_CONFIG
from litpoly.cli import run as run_command
from litpoly.cli.arguments import given_keys, names_a_class
from litpoly.cli.litcli import LitCLI, Stage
from litpoly.data.step_loader import StepLoader


def test_fit_writes_a_complete_run_folder(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick, progress_bar=True)
    out = capsys.readouterr()
    folder = run_folder(tmp_path)
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert (folder / "config.yaml").is_file() and (folder / "hparams.yaml").is_file()
    assert list(folder.glob("events.out.tfevents.*"))
    # The progress bar: not a terminal here, so whole lines (see test_console.py).
    last = [line for line in out.out.splitlines() if line.startswith("Epoch")][-1]
    # (the epoch of the last step: Lightning has counted that epoch complete by the end)
    assert last.startswith(f"Epoch {cli.trainer.current_epoch - 1}, step {problem.steps}"), last
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
    x, y = held_out(cli.trainer.val_dataloaders)  # the held-out points
    expected = problem.witness(state, x, y)  # numpy alone, from the checkpoint's weights
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
    table = np.loadtxt(csv, delimiter=",", skiprows=1, ndmin=2)
    assert table.shape == (len(y), len(header))  # one row per held-out sample
    np.testing.assert_allclose(table[:, header.index("target")], y, atol=1e-7)


def test_a_command_builds_the_parser_of_its_own_subcommand_alone(run_cli: RunCLI) -> None:
    """Each subcommand's parser holds every setting of the run: a command builds the one it runs (its start-up, and
    each trial of a sweep, would build the other three for nothing); ``--help`` builds them all, to list them."""
    cli = run_cli("fit", "--trainer.max_steps", "1")
    assert cli.parser.parse_args(["fit"]).subcommand == "fit"
    for other in ("validate", "test", "predict"):
        with pytest.raises(ArgumentError, match="invalid choice"):
            cli.parser.parse_args([other])
    # Parser settings for a subcommand not built (LightningCLI's `parser_kwargs` by subcommand) are left out.
    kwargs = {"fit": {"default_config_files": [str(DEFAULT_CONFIG)]}, "validate": {"exit_on_error": False}}
    with pytest.raises(SystemExit) as done:
        LitCLI(["validate", "--print_config"], Stage(), args=["validate", "--print_config"], parser_kwargs=kwargs)
    assert done.value.code == 0


def test_print_config_round_trips(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def printed(*args: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run_command(["fit", *args, "--print_config"], default_config=DEFAULT_CONFIG)
        assert exit_info.value.code in (0, None)
        return capsys.readouterr().out

    text = printed(*problem.select, "--seed_everything", "7")
    config = yaml.safe_load(text)
    assert config["seed_everything"] == 7 and config["model"]["class_path"] and config["data"]["class_path"]
    path = tmp_path / "resolved.yaml"
    path.write_text(text)
    assert printed("--config", str(path)) == text
    assert not (tmp_path / "lightning_logs").exists()


def test_a_config_with_its_own_classes_does_not_inherit_the_default_run(run_cli: RunCLI) -> None:
    """examples/twomoons/config.yaml names its classes: none of the sine example's settings (2000 points, 2400 steps,
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
        (["--config", "examples/twomoons/config.yaml"], True),
        (["-c", "examples/twomoons/config.yaml"], True),
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
    assert given_keys(["--config", "examples/twomoons/config.yaml"], "model") == {"hidden", "lr"}
    assert given_keys(args, "data") == {"x_min"}


def test_epochs_and_steps_both_count(problem: Problem, run_cli: RunCLI) -> None:
    """An epoch is one pass over the training data; a run counts in either, whichever its config uses."""
    by_epochs = run_cli("fit", *problem.select, *problem.minibatches, "--trainer.max_epochs", "3",
                        "--trainer.max_steps", "-1")  # fmt: skip
    per_epoch = by_epochs.trainer.num_training_batches
    assert per_epoch > 1 and by_epochs.trainer.global_step == 3 * per_epoch and by_epochs.trainer.current_epoch == 3
    by_steps = run_cli("fit", *problem.select, *problem.minibatches, "--trainer.max_steps", str(per_epoch + 3),
                       "--trainer.max_epochs", "null")  # fmt: skip
    # Counting steps only: StepLoader serves all of them in one epoch that passes over the data as often as
    # needed; a DataLoader's epoch is one pass, so the 3 steps past the first pass are in a second epoch.
    one_epoch = isinstance(by_steps.trainer.train_dataloader, StepLoader)
    assert by_steps.trainer.global_step == per_epoch + 3 and by_steps.trainer.current_epoch == (1 if one_epoch else 2)


#: Bad settings any problem can be given (the run layer's own checks), and some of the second problem's.
BAD_INPUT = [
    *[
        (p, args, setting, allowed)
        for p in PROBLEMS
        for args, setting, allowed in [
            (["--model.no_such_setting", "1"], "model", "'no_such_setting' is not accepted"),
            (["--model", "nowhere.Model"], "model", "No module named 'nowhere'"),
            (["--config", "missing.yaml"], "config", "does not exist"),
            (["--config", "malformed.yaml"], "config", "while parsing"),
            (["--trainer.precision", "8"], "trainer.precision", "'64-true'"),
            (["--trainer.max_epochs", "abc"], "trainer.max_epochs", "abc"),
            (["--guard.divergence_threshold", "nan"], "guard.divergence_threshold", "nan"),
            (["--console.every_n_steps", "0"], "console.every_n_steps", "PositiveInt"),
        ]
    ],
    (TWOMOONS, ["--model.hidden", "0"], "model.hidden", "PositiveInt"),
    (TWOMOONS, ["--model.lr", "-1"], "model.lr", "PositiveFloat"),
    (TWOMOONS, ["--data.val_fraction", "1.5"], "data.val_fraction", "between 0 and 1"),
    (TWOMOONS, ["--data.noise_level", "1"], "twomoons.TwoMoonsDataModule", "'noise_level' is not accepted"),
    # A flag cut short is no flag: argparse would take it for the one it begins (max_steps).
    (PROBLEMS[0], ["--trainer.max_step", "3"], "--trainer.max_step", "unrecognized arguments"),
    # A data folder that is a file: the data module cannot write or read its files there (an OSError in prepare_data).
    (DIGITS, ["--data.data_dir", "malformed.yaml"], "FileExistsError", "File exists: 'malformed.yaml'"),
    pytest.param(
        PROBLEMS[0],
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
    assert "Given value type" not in lines[0]  # the complaint itself, not jsonargparse's dump of the attempt
    assert not (tmp_path / "lightning_logs").exists()


def test_a_file_a_dataloader_worker_cannot_read_before_training_is_one_line(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sample's file gone when a DataLoader worker reads it for the first batch: Lightning re-raises the worker's
    error with its traceback in the message; the command line says its last line (a URL without its password), and
    removes the run folder."""
    from digits.data import DigitsFiles

    def gone(self: DigitsFiles, index: int) -> None:
        raise FileNotFoundError(2, "No such file or directory", f"https://me:s3cret@host/images/{index}.npy")

    monkeypatch.setattr(DigitsFiles, "__getitem__", gone)  # forked workers inherit it
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *DIGITS.select, *DIGITS.quick, "--data.num_workers", "2")
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: FileNotFoundError: [Errno 2] No such file"), errors
    assert "https://…@host/images/" in errors[0] and "Traceback" not in errors[0]
    assert "s3cret" not in out + err  # a data URL's password is not printed
    assert not any((tmp_path / "lightning_logs").glob("*"))  # the run folder, made and removed


def test_the_script_exits_non_zero_without_traceback(tmp_path: Path) -> None:
    """The real entry point, as a user runs it: exit status and stderr of a separate process."""
    result = run_train(tmp_path, "fit", "--trainer.max_epochs", "abc", timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: Parser key "trainer.max_epochs"'), lines
    assert not (tmp_path / "lightning_logs").exists()
