"""``--compile true``: torch.compile of the model, in place, on every path a run takes (parity, save, resume)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import RunCLI, assert_same_weights, load_checkpoint, run_folder
from sinefit.parity_check import ParityCheck


@pytest.mark.slow
def test_compiled_and_eager_runs_resume_each_other(run_cli: RunCLI, tmp_path: Path) -> None:
    """``--compile true`` (torch.compile of the model's forward): the example still matches numpy, its checkpoint
    holds the model's own keys and resumes without compiling, and that run's resumes compiled; the three legs end
    where one uncompiled run does, within float32 rounding of reordered sums."""
    compiled = run_cli("fit", "--compile", "true", "--trainer.max_steps", "200")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # something was compiled
    report = next(c for c in compiled.trainer.callbacks if isinstance(c, ParityCheck)).report  # type: ignore[attr-defined]
    assert report is not None and report.match, report and report.failures
    last = run_folder(tmp_path, 0) / "checkpoints" / "last.ckpt"
    run_cli("fit", "--trainer.max_steps", "300", "--ckpt_path", str(last), "--model.parity", "false")
    last = run_folder(tmp_path, 1) / "checkpoints" / "last.ckpt"
    run_cli(
        "fit", "--compile", "true", "--trainer.max_steps", "400", "--ckpt_path", str(last), "--model.parity", "false"
    )
    run_cli("fit", "--trainer.max_steps", "400", "--model.parity", "false")
    legs, straight = (load_checkpoint(run_folder(tmp_path, v) / "checkpoints" / "last.ckpt") for v in (2, 3))
    assert legs["global_step"] == straight["global_step"] == 400
    assert_same_weights(legs["state_dict"], straight["state_dict"], atol=1e-6)
