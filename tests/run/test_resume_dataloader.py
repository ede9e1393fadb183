"""Exact resume for a standard DataLoader (litpoly.callbacks.resume), interrupted at a chosen step, in this process.

The digits problem reads files through a ``DataLoader(shuffle=True)`` with worker processes, draws dropout masks
every step and sizes OneCycleLR with ``estimated_stepping_batches``: each of these alone makes a resumed run
differ from the uninterrupted one in Lightning 2.6. Interrupted mid-epoch and on an epoch's last batch, with 0
workers, persistent workers and workers made anew each epoch, the resumed run must end exactly where the
uninterrupted run ends: weights, optimizer state and learning-rate schedule. (tests/run/test_resume.py sends real
signals to real processes; here the interruption lands on the very step asked for.)
"""

from __future__ import annotations

import multiprocessing
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import OnExceptionCheckpoint
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, Subset, WeightedRandomSampler

from digits import DigitsDataModule, DigitsFiles
from helpers import (
    DIGITS,
    RunCLI,
    assert_same_optimizer_state,
    assert_same_weights,
    held_out,
    load_checkpoint,
    run_folder,
)
from litpoly.callbacks.resume import ExactResume
from litpoly.check.runs import InterruptAt
from litpoly.cli import DEFAULT_CONFIG
from litpoly.cli import run as run_command
from litpoly.data.resumable import EpochSampler, ResumableLoader, why_not_resumable
from litpoly.data.step_loader import StepLoader
from litpoly.errors import Interrupted

PER_EPOCH = 24  # 1500 training images in batches of 64


def interrupted_fit(args: list[str], stop_after: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fit`` with ``args``, interrupted by Ctrl-C so that it stops after step ``stop_after``."""
    monkeypatch.setattr("sys.argv", ["train.py"])
    with pytest.raises(Interrupted) as stopped:
        run_command([*args, "--trainer.enable_progress_bar", "false"], default_config=DEFAULT_CONFIG,
                 callbacks=[InterruptAt(stop_after - 1)])  # fmt: skip  # not part of the run's config
    assert stopped.value.exit_code == 128 + signal.SIGINT


def final_state(folder: Path) -> dict[str, Any]:
    return load_checkpoint(folder / "checkpoints" / "last.ckpt")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2-persistent", "2-anew-limited"])
def test_interrupted_mid_epoch_and_on_an_epoch_boundary_then_resumed_is_bit_identical(
    workers: str, run_cli: RunCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0 or 2 workers, persistent or made anew each epoch; "limited": epochs cut to 10 batches by
    `--trainer.limit_train_batches`, which end before the loader does."""
    count, *kind = workers.split("-")
    per_epoch = 10 if "limited" in kind else PER_EPOCH
    args = [*DIGITS.select, "--trainer.max_epochs", "2", "--trainer.enable_model_summary", "false",
            "--data.num_workers", count, "--data.persistent_workers", str("anew" not in kind).lower(),
            "--trainer.limit_train_batches", str(per_epoch)]  # fmt: skip
    run_cli("fit", *args)
    full = final_state(run_folder(tmp_path))
    assert full["global_step"] == 2 * per_epoch
    for version, stop_after in ((1, per_epoch), (3, per_epoch + 5)):  # the last batch of epoch 0, mid-epoch 1
        interrupted_fit(["fit", *args], stop_after, monkeypatch)
        assert final_state(run_folder(tmp_path, version))["global_step"] == stop_after
        run_cli("fit", *args, "--ckpt_path", str(run_folder(tmp_path, version) / "checkpoints" / "last.ckpt"))
        resumed = final_state(run_folder(tmp_path, version + 1))
        assert resumed["global_step"] == full["global_step"]
        assert_same_weights(resumed["state_dict"], full["state_dict"])  # bit for bit
        assert_same_optimizer_state(resumed["optimizer_states"][0]["state"], full["optimizer_states"][0]["state"])
        assert resumed["lr_schedulers"] == full["lr_schedulers"]


def test_what_cannot_be_rebuilt_is_named() -> None:
    data = list(range(10))
    assert why_not_resumable(DataLoader(data, shuffle=True, num_workers=2)) is None
    assert why_not_resumable(DataLoader(Subset(data, [1, 2]), batch_size=2)) is None
    assert why_not_resumable(StepLoader(torch.zeros(4))) is None  # resumable by its own protocol

    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Any:
            return iter(data)

    class MyLoader(DataLoader):  # type: ignore[type-arg]
        pass

    weighted = WeightedRandomSampler([1.0] * 10, 10)
    assert why_not_resumable(DataLoader(Stream())) == (
        "the training data is an IterableDataset, whose position only the dataset itself can save"
    )
    assert why_not_resumable(MyLoader(data)) == "the training loader is a DataLoader subclass (MyLoader)"
    assert why_not_resumable(DataLoader(data, sampler=weighted)) == (
        "the training loader has a sampler of its own (WeightedRandomSampler)"
    )
    assert why_not_resumable(DataLoader(data, sampler=RandomSampler(data, replacement=True))) == (
        "the training loader has a sampler of its own (RandomSampler)"
    )
    assert why_not_resumable([torch.zeros(2)]) == "the training loader is a list, with no state_dict/load_state_dict"


def test_the_order_is_distributed_samplers_and_two_processes_share_one_processs_batches() -> None:
    """One process's batch of 2B is the two processes' batches of B together (the DDP equality's reason)."""
    data = list(range(20))
    one = list(EpochSampler(data, num_replicas=1, rank=0, shuffle=True, seed=7))
    two = [list(EpochSampler(data, num_replicas=2, rank=r, shuffle=True, seed=7)) for r in (0, 1)]
    assert sorted(one) == data
    for batch in range(2):  # batches of 3 per process, of 6 on one
        together = two[0][3 * batch : 3 * batch + 3] + two[1][3 * batch : 3 * batch + 3]
        assert sorted(together) == sorted(one[6 * batch : 6 * batch + 6])


def test_a_dataset_with_set_epoch_is_told_the_epoch_before_its_workers_copy_it() -> None:
    class Epochs(torch.utils.data.Dataset):  # type: ignore[type-arg]
        epoch = -1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> int:
            return self.epoch  # what the worker's copy knows

    epoch = [3]
    dataset = Subset(Subset(Epochs(), [0, 1, 2, 3]), [0, 1, 2, 3])  # a split of a split: told all the same
    sampler = EpochSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    loader = ResumableLoader(dataset, epoch=lambda: epoch[0], batch_size=2, sampler=sampler, num_workers=1)
    assert [b.tolist() for b in loader] == [[3, 3], [3, 3]]
    epoch[0] = 4
    assert [b.tolist() for b in loader] == [[4, 4], [4, 4]]


class EpochFiles(DigitsFiles):
    """Digits with a `set_epoch`, as a dataset that seeds its augmentation by the epoch has."""

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class EpochDigits(DigitsDataModule):
    def setup(self, stage: str) -> None:
        super().setup(stage)
        assert self.train_set is not None
        self.train_set.dataset = EpochFiles(self.folder)


def test_set_epoch_with_persistent_workers_is_said(
    run_cli: RunCLI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*DIGITS.select, "--data", f"{__name__}.EpochDigits", "--data.data_dir", DIGITS.select[-1],
            "--data.num_workers", "1", "--trainer.max_steps", "3",
            "--trainer.enable_model_summary", "false"]  # fmt: skip
    interrupted_fit(["fit", *args], 2, monkeypatch)
    said = [line for line in capsys.readouterr().err.splitlines() if "set_epoch" in line]
    assert said == [
        "Warning: the training dataset has set_epoch, but its persistent workers keep the copy they made in the run's "
        "first epoch and never see another epoch: set persistent_workers=False"
    ]
    run_cli("fit", *args, "--ckpt_path", "last")  # asks for its loader twice (litpoly.compat), says it once
    said = [line for line in capsys.readouterr().err.splitlines() if "the training dataset has set_epoch" in line]
    assert len(said) == 1 and said[0].startswith("Warning: the training dataset has set_epoch")
    run_cli("fit", *args, "--data.persistent_workers", "false")
    assert "set_epoch" not in capsys.readouterr().err


def test_float64_runs_resume_and_evaluate_on_the_float64_weights_saved(
    run_cli: RunCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning loads a checkpoint into the float32 model it makes, then converts the model to float64: the run
    layer loads the saved weights again once the model is float64 (litpoly.callbacks.WeightsAsSaved), so a resumed
    run ends bit for bit where one run does, and evaluation uses the float64 weights saved."""
    args = [*DIGITS.select, "--trainer.precision", "64-true", "--trainer.max_steps", "7", "--data.num_workers", "0",
            "--trainer.enable_model_summary", "false"]  # fmt: skip
    interrupted_fit(["fit", *args], 5, monkeypatch)  # version_0: steps 0 to 4
    saved = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    run_cli("fit", *args, "--ckpt_path", str(saved))  # version_1: steps 5 and 6
    run_cli("fit", *args)  # version_2: all 7 in one run
    resumed, straight = final_state(run_folder(tmp_path, 1)), final_state(run_folder(tmp_path, 2))
    assert resumed["global_step"] == straight["global_step"] == 7
    assert_same_weights(resumed["state_dict"], straight["state_dict"])  # bit for bit: resumed from float64 weights
    cli = run_cli("validate", *args, "--ckpt_path", str(saved))
    x, y = held_out(cli.trainer.val_dataloaders)
    expected = DIGITS.witness(load_checkpoint(saved)["state_dict"], x, y)  # numpy, in float64
    assert cli.trainer.callback_metrics["val/loss"].item() == pytest.approx(expected["loss"], rel=1e-13)


def test_a_training_set_that_does_not_split_evenly_across_processes_is_said(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """1499 training images on 2 processes: DistributedSampler repeats one to even the shards; the data module's
    loader, as the run layer gets it under DDP (rank 0 of 2), is said in one line before training."""
    data = DigitsDataModule(DIGITS.select[-1], val_size=298, num_workers=0)
    data.prepare_data()
    data.setup("fit")
    trainer = SimpleNamespace(world_size=2, global_rank=0, datamodule=data, limit_train_batches=1.0)
    callback = ExactResume()
    callback.setup(trainer, None, "fit")  # type: ignore[arg-type]
    loader = data.train_dataloader()
    callback.teardown(trainer, None, "fit")  # type: ignore[arg-type]
    assert isinstance(loader, ResumableLoader) and len(loader.sampler) == 750  # type: ignore[arg-type]
    assert capsys.readouterr().err.splitlines() == [
        "Note: the 1499 training samples do not split evenly across 2 processes: DistributedSampler repeats 1 of "
        "them each epoch to even the shards (a number of samples divisible by 2 makes the run equal to one "
        "process's)"
    ]


class TrainingOnly(L.LightningDataModule):
    """Digits with a training loader and no validation loader: nothing to wrap there."""

    def __init__(self, data_dir: str) -> None:
        super().__init__()
        self.digits = DigitsDataModule(data_dir, num_workers=0)

    def prepare_data(self) -> None:
        self.digits.prepare_data()

    def setup(self, stage: str) -> None:
        self.digits.setup(stage)

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return self.digits.train_dataloader()


def test_a_data_module_without_a_validation_loader_trains_and_resumes(
    run_cli: RunCLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = ["--config", DIGITS.select[1], "--data", f"{__name__}.TrainingOnly", "--data.data_dir",
            DIGITS.select[-1], "--best.monitor", "null", "--trainer.max_steps", "8",
            "--trainer.enable_model_summary", "false"]  # fmt: skip
    interrupted_fit(["fit", *args], 4, monkeypatch)
    run_cli("fit", *args, "--ckpt_path", "last")
    assert final_state(run_folder(tmp_path, 1))["global_step"] == 8


class CustomSampler(DigitsDataModule):
    """The digits, drawn by a sampler of the user's own (which the run layer cannot make resumable)."""

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        assert self.train_set is not None
        sampler = WeightedRandomSampler([1.0] * len(self.train_set), len(self.train_set))
        return DataLoader(self.train_set, batch_size=64, sampler=sampler, num_workers=0)


def test_a_resumed_run_that_cannot_be_exact_says_so(
    run_cli: RunCLI, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = [*DIGITS.select, "--data", f"{__name__}.CustomSampler", "--data.data_dir", DIGITS.select[-1],
            "--trainer.max_steps", "6", "--trainer.enable_model_summary", "false"]  # fmt: skip
    interrupted_fit(["fit", *args], 3, monkeypatch)
    assert "Warning: this resumed run" not in capsys.readouterr().err
    run_cli("fit", *args, "--ckpt_path", "last")
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning: this resumed")]
    assert warnings == [
        "Warning: this resumed run may not go on exactly as the uninterrupted run would: the training loader has a "
        "sampler of its own (WeightedRandomSampler) (README: Exact resume)"
    ]


def test_a_run_that_fails_in_its_sanity_check_leaves_no_dataloader_workers(
    run_cli: RunCLI, capsys: pytest.CaptureFixture[str]
) -> None:
    """The digits model sizes OneCycleLR with ``estimated_stepping_batches``, which sets up the training loader (and
    its persistent workers) before the sanity check: a run that fails there shuts those workers down too, instead
    of leaving them to the garbage collector (which waits seconds for each, and then kills it)."""
    before = set(multiprocessing.active_children())
    with pytest.raises(SystemExit):
        run_cli("fit", *DIGITS.select, "--data.num_workers", "2", "--data.persistent_workers", "true",
                "--trainer.max_steps", "3", "--best.monitor", "val/typo")  # fmt: skip
    assert "got 'val/typo'" in capsys.readouterr().err
    assert [child for child in multiprocessing.active_children() if child not in before] == []


class FailAt(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 5:
            raise RuntimeError("failed at step 5")


def test_a_checkpoint_saved_as_a_run_fails_in_training_still_holds_the_loaders_position(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning's own OnExceptionCheckpoint saves when a run fails mid-training: the training loader is still
    there for it to record its position (the run layer shuts it down early only in the sanity check)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["train.py"])
    saved = OnExceptionCheckpoint(tmp_path / "on_exception")
    with pytest.raises(RuntimeError, match="failed at step 5"):
        run_command(["fit", *DIGITS.select, "--trainer.max_steps", "9", "--trainer.enable_progress_bar", "false"],
                    DEFAULT_CONFIG, callbacks=[FailAt(), saved])  # fmt: skip
    state = load_checkpoint(tmp_path / "on_exception" / "on_exception.ckpt")["loops"]["fit_loop"]["state_dict"]
    assert state["combined_loader"] == [{"epoch": 0, "served": 5}]
