"""litpoly's cheaper stand-ins for Lightning defaults do what Lightning's own do, only less often or for less.

No timings here (machines are noisy: scripts/benchmark.py measures speed). These tests check behaviour:
nothing logged is lost, the bar ends on the last step, profiling still works when asked for.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import lightning as L
import pytest
from conftest import RunCLI
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.profilers import SimpleProfiler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from litpoly import PolynomialRegressor, SineDataModule
from litpoly.callbacks import TimedProgressBar
from litpoly.dashboard import ThrottledTensorBoardLogger
from litpoly.guard import PeriodicCheckpoint
from litpoly.profiler import NullProfiler

QUICK = ["--trainer.max_steps", "40", "--trainer.val_check_interval", "20", "--trainer.log_every_n_steps", "5"]


def test_fit_uses_the_lean_defaults(run_cli: RunCLI) -> None:
    trainer = run_cli("fit", *QUICK, progress_bar=True).trainer
    assert isinstance(trainer.profiler, NullProfiler)
    assert isinstance(trainer.logger, ThrottledTensorBoardLogger)
    assert isinstance(trainer.progress_bar_callback, TimedProgressBar)
    assert isinstance(trainer.checkpoint_callback, PeriodicCheckpoint)


def test_users_choices_replace_them(run_cli: RunCLI) -> None:
    trainer = run_cli(
        "fit", *QUICK, "--trainer.profiler", "simple", "--trainer.logger", "false", "--trainer.enable_progress_bar",
        "false", "--trainer.enable_checkpointing", "false",
    ).trainer  # fmt: skip
    assert isinstance(trainer.profiler, SimpleProfiler) and trainer.loggers == []
    assert trainer.progress_bar_callback is None and trainer.checkpoint_callback is None
    # The real profiler was called around every step: the null one did not swallow its calls.
    assert len(trainer.profiler.recorded_durations["run_training_batch"]) == 40


def test_throttled_logger_flushes_on_its_clock_and_loses_nothing(tmp_path: Path) -> None:
    logger = ThrottledTensorBoardLogger(save_dir=tmp_path, flush_secs=10)
    clock = iter(range(0, 1000, 1))  # one second passes per save()
    with (
        mock.patch.object(type(logger.experiment), "flush", autospec=True) as flush,
        mock.patch("litpoly.dashboard.time.monotonic", side_effect=lambda: float(next(clock))),
    ):
        for step in range(100):
            logger.log_metrics({"metric": float(step)}, step=step)
            logger.save()  # Lightning calls this after every log_metrics
    assert flush.call_count == 10  # at seconds 0, 10, 20, … 90: once every flush_secs, not 100 times
    logger.finalize("success")  # flushes and closes the event file
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("metric")] == [(s, float(s)) for s in range(100)]
    assert (Path(logger.log_dir) / "hparams.yaml").is_file()


def test_timed_bar_redraws_first_and_last(tmp_path: Path) -> None:
    bar = TimedProgressBar(min_interval=3600)
    with mock.patch.object(TQDMProgressBar, "on_train_batch_end", autospec=True) as redraw:
        trainer = L.Trainer(
            max_steps=50, logger=False, enable_checkpointing=False, enable_model_summary=False, callbacks=[bar],
            limit_val_batches=0, default_root_dir=tmp_path,
        )  # fmt: skip
        trainer.fit(PolynomialRegressor(), SineDataModule())
    # Step 1 (nothing drawn yet) and step 50 (the last): never the 48 in between, an hour apart.
    assert [call.args[5] for call in redraw.call_args_list] == [0, 49]  # (self, trainer, module, out, batch, idx)


def test_timed_bar_ends_on_the_last_step_with_validation_inside(tmp_path: Path) -> None:
    bar = TimedProgressBar(min_interval=3600)
    trainer = L.Trainer(
        max_steps=250, val_check_interval=100, check_val_every_n_epoch=None, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[bar], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(PolynomialRegressor(), SineDataModule())
    assert bar.train_progress_bar.n == 250 == trainer.global_step


def test_validate_keeps_its_bar(run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli("fit", *QUICK)
    capsys.readouterr()
    run_cli("validate", "--ckpt_path", "last", progress_bar=True)
    assert "Validation DataLoader 0: 100%" in capsys.readouterr().out


def test_periodic_checkpoint_key_is_modelcheckpoints(tmp_path: Path) -> None:
    settings = {"dirpath": tmp_path, "every_n_train_steps": 7, "save_last": True}
    ours, lightnings = PeriodicCheckpoint(**settings), ModelCheckpoint(**settings)  # type: ignore[arg-type]
    # The same key: checkpoints written with either restore the other's state.
    assert ours.state_key == lightnings.state_key
    assert ours.state_key is ours.state_key  # computed once


@pytest.mark.parametrize(
    ("settings", "on_epoch_end"),
    [
        ({"every_n_train_steps": 500}, True),  # litpoly's default: no save is tied to validation
        ({"every_n_train_steps": 500, "monitor": "val/mse"}, None),  # Lightning's: the metric is fresh then
        ({}, None),  # every epoch: Lightning saves after each validation (here, every 100 steps)
    ],
)
def test_periodic_checkpoint_saves_where_lightning_would(settings: dict[str, object], on_epoch_end: object) -> None:
    assert PeriodicCheckpoint(**settings)._save_on_train_epoch_end is on_epoch_end  # type: ignore[arg-type]


def test_null_profiler_is_a_transparent_context() -> None:
    profiler = NullProfiler()
    with profiler.profile("outer"), profiler.profile("inner"):  # shared, reentrant
        pass
    with pytest.raises(KeyError), profiler.profile("step"):  # exceptions pass through, as with Lightning's
        raise KeyError("boom")
    assert profiler.summary() == ""
