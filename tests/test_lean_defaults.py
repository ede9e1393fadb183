"""litpoly's cheaper stand-ins for Lightning defaults do what Lightning's own do, only less often or for less.

No timings here (machines are noisy: scripts/benchmark.py measures speed). These tests check behaviour:
nothing logged is lost, the bar ends on the last step, profiling still works when asked for.
"""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import lightning as L
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


def test_users_choices_replace_them(run_cli: RunCLI, tmp_path: Path) -> None:
    trainer = run_cli(
        "fit", *QUICK, "--trainer.profiler", "simple", "--trainer.logger", "false", "--trainer.enable_progress_bar",
        "false", "--trainer.enable_checkpointing", "false",
    ).trainer  # fmt: skip
    assert isinstance(trainer.profiler, SimpleProfiler) and trainer.loggers == []
    assert trainer.progress_bar_callback is None and trainer.checkpoint_callback is None
    # The real profiler was called around every step: the null one did not swallow its calls.
    assert len(trainer.profiler.recorded_durations["run_training_batch"]) == 40


def test_throttled_logger_loses_nothing(tmp_path: Path) -> None:
    logger = ThrottledTensorBoardLogger(save_dir=tmp_path, flush_secs=3600)
    with mock.patch.object(type(logger.experiment), "flush", autospec=True) as flush:
        for step in range(100):
            logger.log_metrics({"metric": float(step)}, step=step)
            logger.save()  # Lightning calls this after every log_metrics
    assert flush.call_count == 1  # the first save only; the next is due in an hour
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


def test_periodic_checkpoint_key_is_modelcheckpoints(tmp_path: Path) -> None:
    settings = {"dirpath": tmp_path, "every_n_train_steps": 7, "save_last": True}
    ours, lightnings = PeriodicCheckpoint(**settings), ModelCheckpoint(**settings)  # type: ignore[arg-type]
    # The same settings in the key; only the class name differs.
    assert ours.state_key == lightnings.state_key.replace("ModelCheckpoint", "PeriodicCheckpoint")
    assert ours.state_key is ours.state_key  # computed once


def test_null_profiler_changes_no_result(tmp_path: Path) -> None:
    def train(**kwargs: object) -> list[float]:
        trainer = L.Trainer(
            max_steps=30, logger=False, enable_checkpointing=False, enable_model_summary=False,
            enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path, **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        model = PolynomialRegressor(init_coefficients=[0.1, 0.2, 0.3, 0.4])
        trainer.fit(model, SineDataModule())
        return model.coefficients.tolist()

    assert train(profiler=NullProfiler()) == train()  # Lightning's default PassThroughProfiler
