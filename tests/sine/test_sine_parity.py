"""Lightning against the numpy reference, through the real `fit` command, and proof the check can fail."""

from __future__ import annotations

import math
import re
import runpy
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import REPO, RunCLI
from litpoly.cli.litcli import LitCLI
from sinefit import reference
from sinefit.parity import ParityReport, compare
from sinefit.parity_check import ParityCheck


def parity_of(cli: LitCLI) -> ParityCheck:
    return next(cb for cb in cli.trainer.callbacks if isinstance(cb, ParityCheck))  # type: ignore[attr-defined]


def fit_report(run_cli: RunCLI, *args: str) -> ParityReport:
    """A default-length fit that records every step for the comparison."""
    cli = run_cli("fit", "--trainer.enable_checkpointing", "false", *args)
    report = parity_of(cli).report
    assert report is not None
    assert len(report.steps) == 2400
    return report


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "loss_rtol", "coef_atol"), [("64-true", 1e-12, 1e-12), ("32-true", 1e-5, 2e-6)])
def test_sgd_matches_the_reference_at_every_step(
    run_cli: RunCLI, precision: str, loss_rtol: float, coef_atol: float
) -> None:
    report = fit_report(run_cli, "--trainer.precision", precision)
    assert report.match, report.failures
    assert report.relative_differences.max() <= loss_rtol
    assert np.abs(report.lightning_coefficients - report.reference_coefficients).max() <= coef_atol
    assert np.abs(report.lightning_final - report.reference_final).max() <= coef_atol


@pytest.mark.slow
@pytest.mark.parametrize(("precision", "loss_rtol", "coef_atol"), [("64-true", 1e-12, 1e-12), ("32-true", 2e-5, 5e-6)])
def test_rmsprop_is_tight_until_the_first_sign_change_then_within_o_lr(
    run_cli: RunCLI, precision: str, loss_rtol: float, coef_atol: float
) -> None:
    report = fit_report(run_cli, "--trainer.precision", precision, "--model.optimizer", "rmsprop")
    assert report.match, report.failures
    assert report.lockstep_until is not None and report.lockstep_until > 100
    before = report.steps < report.lockstep_until
    coef_diff = np.abs(report.lightning_coefficients - report.reference_coefficients).max(axis=1)
    assert report.relative_differences[before].max() <= loss_rtol
    assert coef_diff[before].max() <= coef_atol
    # After it: the bound from lr (2·lr/sqrt(1 - alpha) = 0.02), not the SGD bound widened.
    assert coef_diff[~before].max() <= 2 * 1e-3 / math.sqrt(1 - 0.99)
    assert report.tolerance.loss_rtol == loss_rtol and report.tolerance.coef_atol == coef_atol


@pytest.mark.parametrize("change", ["lr +1%", "one init coefficient +1e-4", "the other optimizer"])
@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_a_wrong_reference_is_a_mismatch(run_cli: RunCLI, optimizer: str, change: str) -> None:
    """The check can fail: the same Lightning run against a replay with one thing changed is a MISMATCH."""
    cli = run_cli("fit", "--trainer.max_steps", "300", "--model.optimizer", optimizer)
    report = parity_of(cli).report
    assert report is not None and report.match, report and report.failures
    x32 = cli.datamodule.train_x.float()
    x, y = x32.double().numpy(), torch.sin(cli.datamodule.train_x).float().double().numpy()
    w0, lr = cli.model.initial_coefficients.float().double().numpy(), cli.model.lr  # the float32 run's start
    if change == "lr +1%":
        lr *= 1.01
    elif change == "one init coefficient +1e-4":
        w0 = w0 + np.array([0.0, 0.0, 1e-4, 0.0])
    else:
        optimizer = "sgd" if optimizer == "rmsprop" else "rmsprop"
    replay = reference.run(optimizer, x, y, w0, lr, 300, record_every=1)  # type: ignore[arg-type]
    lightning = (report.steps, report.lightning_losses, report.lightning_coefficients, report.lightning_final)
    verdict = compare(*lightning, replay, x, y, report.tolerance)
    assert not verdict.match
    assert "MISMATCH" in verdict.format()


def test_the_verdict_and_table_are_printed_and_logged(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli("fit", "--trainer.max_steps", "300")
    out = capsys.readouterr().out
    assert "Parity with the numpy reference (sgd, lr=1e-06, float32, 300 steps from the same start):" in out
    assert re.search(
        r"^Verdict: MATCH \(tolerance: loss rel\. diff ≤ 2e-05, coefficients ≤ 3\.4e-05: 5e-06 of rounding "
        r"\+ 2\.9e-05 for a stalled SGD\)$",
        out,
        re.M,
    )
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
    assert [int(r[0]) for r in rows] == [99, 199, 299]
    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"))
    events.Reload()
    assert [e.step for e in events.Scalars("parity/reference_loss")] == [*range(10), 99, 199, 299]
    assert [float(r[2]) for r in rows] == pytest.approx([e.value for e in events.Scalars("parity/reference_loss")][-3:])
    assert events.Scalars("parity/match")[-1].value == 1.0
    assert events.Scalars("optimum/loss")[-1].value == pytest.approx(8.8171654, rel=1e-6)
    assert "Verdict: MATCH" in events.Tensors("parity/text_summary")[-1].tensor_proto.string_val[0].decode()


class StopAfterOneStep(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        trainer.should_stop = True


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--data.batch_size", "500"], "mini-batches of 500"),
        (["--trainer.precision", "bf16-true"], "tolerances exist for 32-true and 64-true"),
        (["--trainer.precision", "bf16-mixed"], "precision bf16-mixed"),
        (["--data.num_samples", "50001", "--model.optimizer", "rmsprop"], "50001 points x 2000 steps exceeds 1e+08"),
    ],
)
def test_skipped_runs_say_so(run_cli: RunCLI, capsys: pytest.CaptureFixture[str], args: list[str], reason: str) -> None:
    steps = "2000" if "50001" in args else "20"
    # The check decides when training starts (by the planned steps): one step shows it.
    stop = "--trainer.callbacks+=test_sine_parity.StopAfterOneStep"
    cli = run_cli("fit", "--trainer.max_steps", steps, "--model.figure", "false", stop, *args)
    assert parity_of(cli).report is None
    out = capsys.readouterr().out
    assert "Parity check skipped:" in out and reason in out


def test_switched_off(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    cli = run_cli("fit", "--trainer.max_steps", "20", "--model.parity", "false")
    assert not any(isinstance(c, ParityCheck) for c in cli.trainer.callbacks)  # type: ignore[attr-defined]
    assert "Parity" not in capsys.readouterr().out


def test_compare_script_reproduces_the_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compare.png"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["compare.py", "--steps", "300", "--out", str(out)])
    runpy.run_path(str(REPO / "scripts" / "compare.py"), run_name="__main__")  # as `python scripts/compare.py …`
    stdout = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"Figure saved to {out}" in stdout
    table = [line.split() for line in stdout.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert [row[0] for row in table] == ["99", "199", "299"]
    losses = np.array([[float(v) for v in row[1:]] for row in table])
    # numpy SGD, torch autograd SGD and Lightning SGD agree; so do torch nn RMSprop and Lightning RMSprop.
    np.testing.assert_allclose(losses[:, 1:3], losses[:, [0, 0]], rtol=1e-5)
    np.testing.assert_allclose(losses[:, 4], losses[:, 3], rtol=1e-5)
    assert len(re.findall(r"^.+:\s+Result: y = ", stdout, re.M)) == 6  # five runs and the closed form
