"""Run safety for any model: a diverged run stops at once with one line; checkpoints are never half-written."""

from __future__ import annotations

import math
import os
import re
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import lightning as L
import pytest
import torch

from helpers import TWOMOONS, Problem, RunCLI
from litpoly.callbacks.guard import RunGuard
from litpoly.errors import CheckpointWriteError, Diverged
from litpoly.plugins import AtomicCheckpointIO, NonFiniteCheckpointError
from sinefit import PolynomialRegressor


def test_a_loss_that_climbs_without_reaching_inf_is_stopped_by_the_threshold(
    run_cli: RunCLI, capsys: pytest.CaptureFixture[str]
) -> None:
    """Adam at lr 1e3 on the classifier: the loss climbs to hundreds, never to inf; the threshold stops it."""
    climbing = [*TWOMOONS.select, "--model.lr", "1000", "--trainer.max_epochs", "5"]
    unguarded = run_cli("fit", *climbing)
    assert math.isfinite(unguarded.trainer.callback_metrics["train/loss"].item())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", *climbing, "--guard.divergence_threshold", "10")
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    match = re.fullmatch(
        r"error: training diverged at step (\d+): the loss (\S+) exceeds `guard.divergence_threshold` 10 "
        r"\(Adam, lr=1000\)\. (Last good checkpoint: \S+|No checkpoint was written before it)\.",
        last,
    )
    assert match is not None, last
    assert float(match.group(2)) > 10 and int(match.group(1)) < 35


class _Broken(L.LightningModule):
    """A model whose weights turn NaN after ``at_step`` steps while its loss, computed before the update, is finite."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.at_step = at_step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = (self.w**2).sum()
        if self.global_step == self.at_step:  # adds 0 to the loss, and NaN to the gradient (sqrt' at 0 is inf)
            loss = loss + 0 * (self.w - self.w.detach()).sqrt().sum()
        return loss

    def train_dataloader(self) -> Any:
        return [torch.zeros(1)] * 20

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_every_parameter_is_checked_for_any_model(tmp_path: Path) -> None:
    """A NaN gradient makes the weights NaN while the loss stays finite: the guard names the step, for a model
    it knows nothing about."""
    trainer = L.Trainer(
        max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RunGuard()], default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(
        Diverged, match=r"^training diverged at step 4: the parameters are no longer finite \(SGD, lr=0\.1\)"
    ):
        trainer.fit(_Broken(at_step=4))


# -- checkpoints that are never half-written ---------------------------------------------------------------------


def test_a_failed_write_leaves_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def dies_halfway(checkpoint: dict[str, Any], target: Path) -> None:
        Path(target).write_bytes(before[: len(before) // 2])
        raise OSError("killed while writing")

    monkeypatch.setattr("torch.save", dies_halfway)
    with pytest.raises(CheckpointWriteError, match=r"could not write .*last.ckpt: killed while writing; the"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("loss", [torch.tensor(1.0), torch.ones(3)], ids=["scalar", "per-sample"])
def test_half_precision_weights_are_not_taken_for_diverged(loss: torch.Tensor) -> None:
    """float16 weights whose sum exceeds float16's range (65504) are finite: their sum is taken in float32."""
    guard, module, trainer = RunGuard(), torch.nn.Linear(100, 1).half(), SimpleNamespace(global_step=1)
    with torch.no_grad():
        module.weight.fill_(1000.0)
    guard.on_train_start(trainer, module)  # type: ignore[arg-type]
    try:
        assert guard._divergence(trainer, loss) is None  # type: ignore[arg-type]
        module.weight.data[0, 0] = math.inf
        assert guard._divergence(trainer, loss) == "the parameters are no longer finite"  # type: ignore[arg-type]
    finally:
        guard.on_train_end(trainer, module)  # type: ignore[arg-type]


def test_non_finite_weights_are_never_written(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    with pytest.raises(NonFiniteCheckpointError, match="not finite"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([1.0, math.nan])}}, path)
    assert not path.exists()


def test_fast_checks_stay_off_the_other_subcommands(problem: Problem, run_cli: RunCLI, tmp_path: Path) -> None:
    """RunGuard and the report belong to fit: validate carries no callback it does not use."""
    run_cli("fit", *problem.select, *problem.quick)
    trainer = run_cli("validate", *problem.select, "--ckpt_path", "last").trainer
    assert not any(isinstance(c, RunGuard) for c in trainer.callbacks)  # type: ignore[attr-defined]


# -- on an accelerator: each step's values read one step late, never waiting for the step -------------------------


def test_read_one_step_late_the_guard_names_the_step_that_diverged(tmp_path: Path) -> None:
    """The accelerator's path (``read_late``), on the CPU: each step's values judged a step later."""
    trainer = L.Trainer(
        max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RunGuard(read_late=True)], default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(
        Diverged, match=r"^training diverged at step 4: the parameters are no longer finite \(SGD, lr=0\.1\)"
    ):
        trainer.fit(_Broken(at_step=4))


def test_read_one_step_late_no_checkpoint_of_a_diverged_step_is_written(tmp_path: Path) -> None:
    """A checkpoint every step: the one of the step that turned the weights NaN waits for that step's values and
    is refused by the guard (which names the step), before the write; the one before it is whole."""
    saving = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True)
    trainer = L.Trainer(
        max_steps=20, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[RunGuard(read_late=True), saving], plugins=[AtomicCheckpointIO()], default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(Diverged, match=r"^training diverged at step 4: the parameters are no longer finite"):
        trainer.fit(_Broken(at_step=4))
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and torch.isfinite(last["state_dict"]["w"]).all()


class _Watched(torch.Tensor):
    """A tensor that notes every read of its value by the host (each would wait for the device there): the run
    layer's file that made it, or "elsewhere" (Lightning, the example)."""

    READS = (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu, torch.Tensor.__bool__,
             torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.__format__)  # fmt: skip
    by: ClassVar[list[str]] = []

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        to_host = func is torch.Tensor.to and "cpu" in map(str, [*args[1:], *(kwargs or {}).values()])
        if func in cls.READS or to_host:
            callers = [
                frame.filename
                for frame in traceback.extract_stack()[:-1]
                if f"{os.sep}torch{os.sep}" not in frame.filename
            ]
            cls.by.append(callers[-1] if f"{os.sep}litpoly{os.sep}" in callers[-1] else "elsewhere")
        return super().__torch_function__(func, types, args, kwargs)


@pytest.mark.parametrize("late", [True, False], ids=["lagged", "at-once"])
def test_the_run_layer_reads_no_device_value_per_step(
    late: bool, run_cli: RunCLI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A default fit whose loss notes every read of its value: on the accelerator's path the run layer reads none
    per step (the console's line every 100 steps reads one); read at once, as on the CPU, every step reads it."""
    training_step = PolynomialRegressor.training_step
    monkeypatch.setattr(PolynomialRegressor, "training_step", lambda *args: training_step(*args).as_subclass(_Watched))
    monkeypatch.setattr(_Watched, "by", [])
    run_cli("fit", "--trainer.max_steps", "300", "--guard.read_late", str(late).lower())
    run_layer = [f for f in _Watched.by if f != "elsewhere"]
    guard = [f for f in run_layer if f.endswith(("guard.py", "lagged.py"))]
    if late:
        assert guard == [] and len(run_layer) <= 300 // 100, run_layer
    else:
        assert len(guard) >= 300
