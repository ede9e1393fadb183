"""Run safety against hostile and broken files: checkpoints read once and weights-only on every path, archives and
YAML that cannot expand without bound, and `--ckpt_path last` that a truncated file or a killed run cannot fool."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from helpers import RunCLI, load_checkpoint, run_folder
from litpoly.checkpoint_file import UnreadableCheckpoint, read_checkpoint
from litpoly.cli.litcli import LitCLI

QUICK = ("--trainer.max_steps", "20", "--model.parity", "false")


def one_error_line(capsys: pytest.CaptureFixture[str], excinfo: pytest.ExceptionInfo[SystemExit], code: int) -> str:
    assert excinfo.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


class Payload:
    """Unpickled, it creates ``marker``: the proof that a read ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_the_trainer_restores_the_checkpoint_that_was_checked_not_the_file_read_again(
    run_cli: RunCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file swapped for a pickled payload after the command line has read and checked it: the Trainer restores
    what was checked (read once), so the payload never runs and the run resumes from the checked step."""
    run_cli("fit", *QUICK)
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    marker = tmp_path / "ran"
    original = LitCLI.instantiate_trainer

    def swap_then_instantiate(self: LitCLI, **kwargs: Any) -> Any:
        checkpoint = load_checkpoint(last)
        checkpoint["payload"] = Payload(marker)
        torch.save(checkpoint, last)  # a full pickle: loading it without weights_only would touch the marker
        return original(self, **kwargs)

    monkeypatch.setattr(LitCLI, "instantiate_trainer", swap_then_instantiate)
    resumed = run_cli("fit", *QUICK, "--trainer.max_steps", "30", "--ckpt_path", str(last))
    assert resumed.trainer.global_step == 30
    assert not marker.exists()
    with pytest.raises(Exception, match="Unsupported global"):  # the swapped file does hold the payload
        torch.load(last, weights_only=True)


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [
        (("--weights_only", "false"), {}, "error: `weights_only` false is not allowed: checkpoints are read"),
        ((), {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, "error: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set:"),
    ],
    ids=["flag", "environment"],
)
def test_settings_that_would_unpickle_code_are_refused(
    flag: tuple[str, ...],
    env: dict[str, str],
    expected: str,
    run_cli: RunCLI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run_cli("fit", *QUICK)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        run_cli("validate", *QUICK[2:], "--ckpt_path", "last", *flag)
    assert one_error_line(capsys, excinfo, 2).startswith(expected)
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]


def write_archive(path: Path, records: dict[str, tuple[bytes, int]]) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, (data, compression) in records.items():
            archive.writestr(name, data, compress_type=compression)


def test_an_archive_that_could_expand_is_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    """torch.save stores its records uncompressed: a compressed record (a small file that inflates to gigabytes)
    or a file that is no zip archive at all (the old format, whose storages claim their own sizes) is refused by
    looking at the archive's directory only."""
    bomb = tmp_path / "bomb.ckpt"
    records = {
        "archive/data.pkl": (pickle.dumps({}), zipfile.ZIP_STORED),
        "archive/data/0": (bytes(10**7), zipfile.ZIP_DEFLATED),
    }
    write_archive(bomb, records)
    assert bomb.stat().st_size < 10**6
    with pytest.raises(UnreadableCheckpoint, match=r"has a compressed record \(archive/data/0\)"):
        read_checkpoint(bomb)
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {}}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnreadableCheckpoint, match="is not a readable checkpoint"):
        read_checkpoint(legacy)
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, good)
    assert read_checkpoint(good)["state_dict"]["w"].sum() == 3


def test_a_yaml_bomb_is_one_line_and_allocates_nothing(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]  # 10**9 values
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join([*lines, "trainer:", "  max_steps: *a8"]) + "\n")
    with pytest.raises(SystemExit) as excinfo:
        run_cli("fit", "--config", str(bomb))
    assert "aliases (*name) expand to more than 1000000 values" in one_error_line(capsys, excinfo, 2)
    assert not (tmp_path / "lightning_logs").exists()


def test_last_passes_over_a_truncated_checkpoint_to_the_newest_that_reads(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A disk that filled cut the newest last.ckpt short: the relaunched command resumes from the run's newest
    complete checkpoint (a periodic one) and says which it passed over, instead of failing on every relaunch."""
    run_cli("fit", *QUICK, "--checkpoint.every_n_train_steps", "10", "--checkpoint.save_top_k", "-1")
    folder = run_folder(tmp_path) / "checkpoints"
    last = folder / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    capsys.readouterr()
    resumed = run_cli("fit", *QUICK, "--trainer.max_steps", "30", "--ckpt_path", "last")
    assert Path(resumed.trainer.ckpt_path).name == "epoch=0-step=20.ckpt"
    assert resumed.trainer.global_step == 30
    assert f"Warning: passing over {last}: is not a readable checkpoint" in capsys.readouterr().err


def test_last_is_the_newest_checkpoint_of_the_experiment_even_without_a_last_ckpt(
    run_cli: RunCLI, tmp_path: Path
) -> None:
    """A newer run stopped before it wrote its first last.ckpt, with a periodic checkpoint: `last` resumes that,
    not the older, finished run."""
    run_cli("fit", *QUICK)  # version_0: finished at step 20
    run_cli("fit", *QUICK, "--trainer.max_steps", "30", "--checkpoint.every_n_train_steps", "25")  # version_1
    newer = run_folder(tmp_path, 1) / "checkpoints"
    (newer / "last.ckpt").unlink()  # as if killed before it was written
    (periodic,) = newer.glob("epoch=*.ckpt")
    resumed = run_cli("fit", *QUICK, "--trainer.max_steps", "40", "--ckpt_path", "last")
    assert Path(resumed.trainer.ckpt_path) == periodic
    assert load_checkpoint(periodic)["global_step"] == 25 and resumed.trainer.global_step == 40


def test_a_finished_run_relaunched_says_so_and_writes_nothing(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli("fit", *QUICK, "--ckpt_path", "last")  # the preemptible idiom's first launch: a new run
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        run_cli("fit", *QUICK, "--ckpt_path", "last")
    assert excinfo.value.code == 0
    out = capsys.readouterr().out.strip().splitlines()
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    assert out == [
        f"{last} has finished this schedule (max_steps=20): nothing to train, nothing written "
        "(raise --trainer.max_steps to train on)."
    ]
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]


#: No validation counts as better (min_delta): early stopping ends the run at its second validation.
EARLY = ("--early_stopping.patience", "1", "--early_stopping.min_delta", "1e9", "--trainer.val_check_interval", "5")


@pytest.mark.parametrize(
    ("stop", "done"),
    [(EARLY, "early stopping: patience exhausted"), (("--trainer.max_time", "00:00:00:01"), "max_time=00:00:00:01")],
    ids=["early_stopping", "max_time"],
)
def test_a_run_stopped_early_or_out_of_time_relaunched_says_so(
    stop: tuple[str, ...], done: str, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that early stopping or ``max_time`` ended is done too: resumed, Lightning would train one more
    validation interval (one more step) and stop again, writing checkpoints past the point the run ended."""
    command = ("fit", "--model.parity", "false", "--trainer.max_steps", "100000", *stop)
    run_cli(*command)
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    step, written = load_checkpoint(last)["global_step"], last.stat().st_mtime_ns
    assert 0 < step < 100000  # it did stop before its max_steps
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        run_cli(*command, "--ckpt_path", "last")
    assert excinfo.value.code == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(f"{last} has finished this schedule ({done}): nothing to train, nothing written (")
    assert last.stat().st_mtime_ns == written and load_checkpoint(last)["global_step"] == step
    assert [p.name for p in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]


@pytest.mark.parametrize("key", ["max_steps", "max_epochs", "limit_train_batches"])
def test_a_schedule_that_trains_nothing_is_one_line(
    key: str, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        run_cli("fit", "--model.parity", "false", f"--trainer.{key}", "0")
    line = one_error_line(capsys, excinfo, 2)
    assert line.startswith(f"error: `trainer.{key}` 0") and " trains nothing: give a positive " in line
    assert not (tmp_path / "lightning_logs").exists()


def test_accumulated_batches_print_each_step_once_with_the_loss_the_model_logged(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console's loss lines count optimizer steps, not micro-batches, and show the loss as the model logged it
    (Lightning hands the hooks the loss divided by accumulate_grad_batches): TensorBoard's reader is the witness."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    settings = ("--trainer.accumulate_grad_batches", "2", "--data.batch_size", "500", "--console.every_n_steps", "5",
                "--trainer.log_every_n_steps", "5")  # fmt: skip
    run_cli("fit", *QUICK, *settings)
    printed = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit() or line[:2] == "-1"]
    events = EventAccumulator(str(run_folder(tmp_path)), size_guidance={"scalars": 0})
    events.Reload()
    logged = [[str(event.step), event.value] for event in events.Scalars("train/loss")]
    assert [step for step, _ in printed] == ["4", "9", "14", "19"] == [step for step, _ in logged]
    assert [float(loss) for _, loss in printed] == pytest.approx([value for _, value in logged], rel=1e-6)


def test_evaluating_restores_no_callback_state_and_warns_of_none(
    run_cli: RunCLI, recwarn: pytest.WarningsRecorder
) -> None:
    """validate/test/predict train nothing: the fit callbacks' states in the checkpoint are not restored, so
    Lightning has no callback to warn about."""
    run_cli("fit", *QUICK, "--best.monitor", "val/mse", "--trainer.val_check_interval", "10")
    recwarn.clear()
    for subcommand in ("validate", "test"):
        run_cli(subcommand, "--model.parity", "false", "--ckpt_path", "last")
    messages = [str(w.message) for w in recwarn]
    assert not [m for m in messages if "callbacks used to create the checkpoint" in m], messages


def test_a_run_folder_copied_elsewhere_still_resumes(run_cli: RunCLI, tmp_path: Path) -> None:
    """The checked checkpoint is handed over by path: a run folder moved to another root resumes from there."""
    run_cli("fit", *QUICK)
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "lightning_logs", moved / "lightning_logs")
    resumed = run_cli("fit", *QUICK, "--trainer.max_steps", "25", "--trainer.default_root_dir", str(moved),
                      "--ckpt_path", "last")  # fmt: skip
    assert resumed.trainer.global_step == 25
    assert Path(resumed.trainer.ckpt_path).is_relative_to(moved)
    assert os.path.exists(run_folder(moved, 1) / "checkpoints" / "last.ckpt")


def test_a_full_disk_is_one_line_and_keeps_the_checkpoints_written_before(
    run_cli: RunCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The disk fills after the save at step 10: torch's C++ stream error becomes one line that says the disk is
    full, and the checkpoint of step 10 is whole (a full disk is simulated: torch.save writes half, then fails as
    it does, and the folder has no space left)."""
    import litpoly.plugins

    real_save, saves = torch.save, []

    def filling_save(obj: Any, path: Any, *args: Any, **kwargs: Any) -> None:
        saves.append(path)
        if len(saves) > 2:  # last.ckpt and the periodic one at step 10 are written; then the disk is full
            Path(path).write_bytes(b"PK\x03\x04 half a file")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0")
        real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(litpoly.plugins.torch, "save", filling_save)
    monkeypatch.setattr(litpoly.plugins.shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10**9, 10**9, 0))
    capsys.readouterr()
    with pytest.raises(SystemExit) as excinfo:
        run_cli("fit", *QUICK, "--checkpoint.every_n_train_steps", "10", "--best.monitor", "null")
    line = one_error_line(capsys, excinfo, 1)
    assert line.startswith("error: could not write ") and "the disk is full (0 MiB free in " in line
    folder = run_folder(tmp_path) / "checkpoints"
    assert read_checkpoint(folder / "last.ckpt")["global_step"] == 10
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=0-step=10.ckpt", "last.ckpt"]  # no partial file


def test_a_root_that_cannot_hold_runs_is_one_line(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    with pytest.raises(SystemExit) as excinfo:
        run_cli("fit", *QUICK, "--trainer.default_root_dir", str(file / "runs"))
    line = one_error_line(capsys, excinfo, 2)
    assert (
        line == f"error: `trainer.default_root_dir` {file / 'runs'}: {file} is not a folder: give a folder to write "
        "the runs into"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_settings_from_another_version_of_the_model_are_one_rule_everywhere(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint whose model settings include one the class no longer takes: fit, validate and export all
    refuse it with the same line; one that lacks a setting the class now has loads (its default fills it in)."""
    from litpoly.errors import CheckpointError
    from litpoly.export import load_trained

    run_cli("fit", *QUICK)
    checkpoint = load_checkpoint(run_folder(tmp_path) / "checkpoints" / "last.ckpt")
    extra, lacking = tmp_path / "extra.ckpt", tmp_path / "lacking.ckpt"
    torch.save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "old_setting": 1}}, extra)
    torch.save({**checkpoint, "hyper_parameters": {k: v for k, v in checkpoint["hyper_parameters"].items()
                                                   if k != "figure"}}, lacking)  # fmt: skip
    expected = (f"error: `ckpt_path` {extra} was saved by another version of sinefit.PolynomialRegressor: this one "
                "takes no `old_setting`: use the code it was trained with")  # fmt: skip
    capsys.readouterr()
    for subcommand in ("fit", "validate"):
        with pytest.raises(SystemExit) as excinfo:
            run_cli(subcommand, *QUICK[2:], "--ckpt_path", str(extra))
        assert one_error_line(capsys, excinfo, 2) == expected
    with pytest.raises(CheckpointError) as refused:
        load_trained(extra, "sinefit.PolynomialRegressor")
    assert refused.value.line == expected
    evaluated = run_cli("validate", *QUICK[2:], "--ckpt_path", str(lacking))
    assert evaluated.trainer.callback_metrics["val/mse"] > 0


def test_last_under_a_remote_root_is_one_line(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    """`last` looks through local run folders only: under an s3:// root it says so instead of starting afresh."""
    with pytest.raises(SystemExit) as excinfo:
        run_cli("fit", *QUICK, "--trainer.default_root_dir", "s3://bucket/runs", "--ckpt_path", "last")
    assert one_error_line(capsys, excinfo, 2) == (
        "error: `ckpt_path` last looks in a local `trainer.default_root_dir`, not s3://bucket/runs: give the "
        "checkpoint's path"
    )


def test_a_sweep_space_that_is_a_yaml_bomb_is_refused(tmp_path: Path) -> None:
    from litpoly.sweep import SearchSpace

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    space = tmp_path / "space.yaml"
    space.write_text("\n".join([*lines, "name: bomb", "metric: val/sse", "args: *a8"]) + "\n")
    with pytest.raises(Exception, match=r"aliases \(\*name\) expand to more than 1000000 values"):
        SearchSpace.load(space)
