"""The sine example's own report, read back with TensorBoard's reader, and its full-length runs against the optimum."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from helpers import REPO, RunCLI, least_squares, load_checkpoint, run_folder, run_train

STEPS = ["--trainer.max_steps", "300", "--trainer.log_every_n_steps", "10"]


@pytest.fixture
def finished_run(run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    """One 300-step RMSprop fit: its run folder and what it printed."""
    run_cli("fit", *STEPS, "--model.optimizer", "rmsprop")
    return run_folder(tmp_path), capsys.readouterr().out


def load(run: Path) -> EventAccumulator:
    events = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_coefficients_gap_and_optimum(finished_run: tuple[Path, str]) -> None:
    run, out = finished_run
    events = load(run)
    # The coefficient curves end on the numbers of the Result line.
    result = re.search(r"^Result: y = (\S+) \+ (\S+) x \+ (\S+) x\^2 \+ (\S+) x\^3$", out, re.M)
    assert result is not None
    for name, printed in zip("abcd", result.groups(), strict=True):
        assert events.Scalars(f"coef/{name}")[-1].value == pytest.approx(float(printed), rel=1e-6, abs=1e-9)
    # The optimum is numpy's least squares; the gap is the loss minus its floor, logged at the same steps.
    w_star, floor = least_squares()
    assert events.Scalars("optimum/loss")[-1].value == pytest.approx(floor, rel=1e-6)
    for name, value in zip("abcd", w_star, strict=True):
        assert events.Scalars(f"optimum/{name}")[-1].value == pytest.approx(value, abs=1e-7)
    gaps = {e.step: e.value for e in events.Scalars("train/gap_to_optimum")}
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == sorted(gaps) == list(range(9, 300, 10))
    for e in losses:
        assert gaps[e.step] == pytest.approx(e.value - floor, rel=1e-5)
    # The final loss is the one at the printed coefficients, as the parity table computes it.
    final_loss = events.Scalars("final/loss")[-1].value
    table_row = re.search(r"^lightning\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)", out, re.M)
    assert table_row is not None and final_loss == pytest.approx(float(table_row.group(5)), rel=1e-5)
    assert events.Scalars("final/gap_to_optimum")[-1].value == pytest.approx(final_loss - floor, rel=1e-6)
    assert len(events.Scalars("val/mse")) == 3  # validation every 100 steps


def test_figure_equation_and_layout(finished_run: tuple[Path, str]) -> None:
    run, out = finished_run
    events = load(run)
    images = events.Images("fit")
    assert [image.step for image in images] == [100, 200, 300]
    assert images[-1].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[-1].width >= 300
    equation = events.Tensors("equation/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert f"Result: {equation}" in out  # the equation logged at the last validation is the final one
    layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category for chart in category.chart}
    for name in "abcd":
        assert charts[name] == [f"coef/{name}", f"optimum/{name}"]


def test_no_figure_when_switched_off(run_cli: RunCLI, tmp_path: Path) -> None:
    run_cli("fit", *STEPS, "--model.figure", "false")
    events = load(run_folder(tmp_path))
    assert "fit" not in events.Tags()["images"] and "coef/a" in events.Tags()["scalars"]


def test_the_default_run_prints_no_warnings(tmp_path: Path) -> None:
    result = run_train(tmp_path, "fit", "--trainer.max_steps", "200", fresh=True)  # import-time warnings too
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert not re.search(r"warn|deprecat|Tip:", output, re.I), output[-2000:]
    assert "Result: y = " in output and "Verdict: MATCH" in output


def test_sgd_above_its_limit_is_warned_about_then_stopped_at_once(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--model.lr", "1e-5", "--checkpoint.every_n_train_steps", "10")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.splitlines()
    warning = next(line for line in err if line.startswith("Warning:"))
    assert "SGD lr 1e-05 is above the stability limit" in warning and "3.56e-06" in warning
    match = re.fullmatch(
        r"error: training diverged at step (\d+): the loss is (inf|nan) \(SGD, lr=1e-05\)\. "
        r"Last good checkpoint: (\S+)\.",
        err[-1],
    )
    assert match is not None, err[-1]
    step = int(match.group(1))
    assert step < 100  # stopped at once, not after 2400 NaN steps
    # The last good checkpoint is finite and from before the divergence; no checkpoint holds NaN.
    kept = load_checkpoint(Path(match.group(3)))
    assert kept["global_step"] <= step and torch.isfinite(kept["state_dict"]["coefficients"]).all()
    for path in (tmp_path / "lightning_logs").rglob("*.ckpt"):
        assert all(torch.isfinite(w).all() for w in load_checkpoint(path)["state_dict"].values()), path


def test_just_below_the_limit_trains_without_warning(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    cli = run_cli("fit", "--model.lr", "3.5e-6", "--trainer.max_steps", "300", "--model.parity", "false")
    assert "stability limit" not in capsys.readouterr().err
    assert torch.isfinite(cli.model.coefficients).all()


# -- full-length runs, against the closed-form optimum ---------------------------------------------------


@pytest.mark.slow
def test_rmsprop_reaches_the_closed_form_optimum(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    cli = run_cli("fit", "--config", str(REPO / "configs" / "rmsprop.yaml"))
    w_star, floor = least_squares()
    w = np.array(cli.model.coefficients.tolist())
    # Near the optimum RMSprop's step is ±lr whatever the gradient's size, so it keeps jittering by
    # ~lr = 1e-3 around w*; after 2400 steps every coefficient must be within 3 such steps.
    np.testing.assert_allclose(w, w_star, rtol=0, atol=3e-3)
    losses = [float(line.split()[1]) for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert len(losses) == 24
    assert floor <= losses[-1] < 9.0  # the seed's RMSprop cell ends at ≈8.8–9.0; the floor is 8.8172


@pytest.mark.slow
def test_default_sgd_fit_loss_falls_at_every_report(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = run_cli("fit")
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [int(step) for step, _ in lines] == list(range(99, 2400, 100))
    losses = [float(loss) for _, loss in lines]
    # lr = 1e-6 is below the stability limit 3.56e-6, so gradient descent on this quadratic loss
    # decreases the loss at every step; it must still be above the closed-form floor.
    _, floor = least_squares()
    assert all(later < earlier for earlier, later in itertools.pairwise(losses))
    assert floor < losses[-1] < 0.05 * losses[0]
    events = load(run_folder(tmp_path))
    assert len(events.Scalars("val/mse")) == 24  # validation every 100 steps
    assert [e.step for e in events.Scalars("train/loss")][-1] == 2399
    for name, value in cli.model.coefficient_dict().items():
        assert events.Scalars(f"coef/{name}")[-1].value == pytest.approx(value, rel=1e-6, abs=1e-9)
