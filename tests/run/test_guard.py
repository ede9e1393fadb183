"""Run safety for any model: a diverged run stops at once with one line; checkpoints are never half-written."""

from __future__ import annotations

import math
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch

from helpers import TWOMOONS, Problem, RunCLI
from litpoly.callbacks.guard import RunGuard
from litpoly.errors import CheckpointWriteError, Diverged
from litpoly.plugins import AtomicCheckpointIO, NonFiniteCheckpointError


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
