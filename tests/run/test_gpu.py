"""The GPU path (marked gpu; skipped where there is no CUDA device): scripts/gpu_check.sh runs these on one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from helpers import PROBLEMS, RunCLI, load_checkpoint, run_folder
from litpoly.cli.litcli import LitCLI
from sinefit.parity_check import ParityCheck

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (scripts/gpu_check.sh runs these)"),
]
GPU = ["--trainer.accelerator", "gpu", "--trainer.devices", "1"]


def ran_on_the_gpu(cli: LitCLI) -> bool:
    """Whether the fit ran on CUDA. Not ``model.device``: Lightning moves the model back to the CPU at teardown."""
    return cli.trainer.strategy.root_device.type == "cuda"


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_the_example_matches_numpy_on_the_gpu(run_cli: RunCLI, precision: str) -> None:
    cli = run_cli("fit", *GPU, "--trainer.precision", precision, "--trainer.max_steps", "1000")
    assert ran_on_the_gpu(cli)
    report = next(c for c in cli.trainer.callbacks if isinstance(c, ParityCheck)).report  # type: ignore[attr-defined]
    # The report holds the GPU run to the same per-dtype tolerances as the CPU (float64: coefficients ≤ 3e-14).
    assert report is not None and report.match, report and report.failures
    assert len(report.steps) == 1000  # every step compared, not a sample


def test_every_problem_trains_on_the_gpu(run_cli: RunCLI) -> None:
    for problem in PROBLEMS:
        cli = run_cli("fit", *problem.select, *problem.quick, *GPU)
        assert ran_on_the_gpu(cli) and cli.trainer.global_step == problem.steps
        assert all(torch.isfinite(p).all() for p in cli.model.parameters())


def test_a_cpu_checkpoint_goes_on_on_the_gpu_and_back(run_cli: RunCLI, tmp_path: Path) -> None:
    run_cli("fit", "--trainer.accelerator", "cpu", "--trainer.max_steps", "300", "--model.parity", "false")
    run_cli("fit", *GPU, "--trainer.max_steps", "600", "--ckpt_path", "last", "--model.parity", "false")
    run_cli("fit", "--trainer.accelerator", "cpu", "--trainer.max_steps", "900", "--ckpt_path", "last")
    straight = run_cli("fit", "--trainer.accelerator", "cpu", "--trainer.max_steps", "900", "--model.parity", "false")
    resumed = load_checkpoint(run_folder(tmp_path, 2) / "checkpoints" / "last.ckpt")
    assert resumed["global_step"] == 900
    # Not bit for bit: the GPU rounds its sums otherwise. Within float32's rounding of this run, though.
    difference = (resumed["state_dict"]["coefficients"] - straight.model.coefficients.detach()).abs().max()
    assert difference.item() < 1e-5


class NoSyncInSteps(L.Callback):
    """Makes any call that waits for the GPU an error (``torch.cuda.set_sync_debug_mode``) from each step's start to
    the next's: on every step but the first and those where the default run validates, saves or prints its loss line
    (every 100th), which may wait."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int) -> None:
        quiet = trainer.global_step >= 1 and (trainer.global_step + 1) % 100 != 0
        torch.cuda.set_sync_debug_mode("error" if quiet else "default")

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.cuda.set_sync_debug_mode("default")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        torch.cuda.set_sync_debug_mode("default")


def test_a_default_fit_never_waits_for_the_gpu_within_its_steps(run_cli: RunCLI) -> None:
    """The run layer reads each step's loss and weights one step late (RunGuard): no step waits for the GPU, so
    Lightning's Python work overlaps the GPU's. The parity check still matches every step."""
    cli = run_cli("fit", *GPU, "--trainer.max_steps", "400", "--trainer.callbacks+=test_gpu.NoSyncInSteps")
    assert ran_on_the_gpu(cli) and cli.trainer.global_step == 400
    report = next(c for c in cli.trainer.callbacks if isinstance(c, ParityCheck)).report  # type: ignore[attr-defined]
    assert report is not None and report.match, report and report.failures
