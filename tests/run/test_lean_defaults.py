"""litpoly's cheaper stand-ins for Lightning defaults do what Lightning's own do, only less often or for less.

No timings here (machines are noisy: scripts/benchmark.py measures speed). These tests check behaviour:
nothing logged is lost, the bar ends on the last step, profiling still works when asked for.
"""

from __future__ import annotations

import pickle
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.profilers import SimpleProfiler
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import SINE, Problem, RunCLI
from litpoly.callbacks.checkpoint import PeriodicCheckpoint
from litpoly.callbacks.progress import LineProgress, TimedProgressBar
from litpoly.loggers import ThrottledTensorBoardLogger
from litpoly.plugins import STEP_HOOKS, NullProfiler, skip_empty_step_hooks
from sinefit.cache import ReuseLastInput
from twomoons import TwoMoonsClassifier, TwoMoonsDataModule


def test_fit_uses_the_lean_defaults(problem: Problem, run_cli: RunCLI) -> None:
    with mock.patch("litpoly.plugins.skip_empty_step_hooks", wraps=skip_empty_step_hooks) as skip:
        trainer = run_cli("fit", *problem.select, *problem.quick, progress_bar=True).trainer
    assert isinstance(trainer.profiler, NullProfiler)
    assert skip.call_count == 1 and skip.call_args.args[0] is trainer.callbacks  # the model's callbacks included
    assert isinstance(trainer.logger, ThrottledTensorBoardLogger)
    assert isinstance(trainer.progress_bar_callback, LineProgress)  # pytest's stdout is no terminal
    assert isinstance(trainer.checkpoint_callback, PeriodicCheckpoint)


def test_users_choices_replace_them(problem: Problem, run_cli: RunCLI) -> None:
    trainer = run_cli(
        "fit", *problem.select, *problem.quick, "--trainer.profiler", "simple", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false",
    ).trainer  # fmt: skip
    assert isinstance(trainer.profiler, SimpleProfiler) and trainer.loggers == []
    assert trainer.progress_bar_callback is None and trainer.checkpoint_callback is None
    # The real profiler was called around every step: the null one did not swallow its calls.
    assert len(trainer.profiler.recorded_durations["run_training_batch"]) == problem.steps


def test_throttled_logger_flushes_on_its_clock_and_loses_nothing(tmp_path: Path) -> None:
    logger = ThrottledTensorBoardLogger(save_dir=tmp_path, flush_secs=10)
    clock = iter(range(0, 1000, 1))  # one second passes per save()
    with (
        mock.patch.object(type(logger.experiment), "flush", autospec=True) as flush,
        mock.patch("litpoly.loggers.time.monotonic", side_effect=lambda: float(next(clock))),
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
        trainer.fit(TwoMoonsClassifier(), TwoMoonsDataModule())
    # Step 1 (nothing drawn yet) and step 50 (the last): never the 48 in between, an hour apart.
    assert [call.args[5] for call in redraw.call_args_list] == [0, 49]  # (self, trainer, module, out, batch, idx)


def test_timed_bar_ends_on_the_last_step_with_validation_inside(tmp_path: Path) -> None:
    bar = TimedProgressBar(min_interval=3600)
    trainer = L.Trainer(
        max_steps=250, val_check_interval=100, check_val_every_n_epoch=None, logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[bar], default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(TwoMoonsClassifier(), TwoMoonsDataModule())  # steps counted across one epoch of many passes
    assert bar.train_progress_bar.n == 250 == trainer.global_step


def test_validate_keeps_its_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bar = TimedProgressBar()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, callbacks=[bar], default_root_dir=tmp_path)
    trainer.validate(TwoMoonsClassifier(), TwoMoonsDataModule())
    assert "Validation DataLoader 0: 100%" in capsys.readouterr().out


def test_the_bar_is_for_terminals_and_lines_for_files(run_cli: RunCLI, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(run_cli("fit", *SINE.quick, progress_bar=True).trainer.progress_bar_callback, LineProgress)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert isinstance(run_cli("fit", *SINE.quick, progress_bar=True).trainer.progress_bar_callback, TimedProgressBar)


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


class ManualTwoMoons(TwoMoonsClassifier):
    """The second problem's model under manual optimization (Lightning's hook has a branch of its own for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        optimizer = self.optimizers()
        loss = super().training_step(batch, batch_idx)
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        return loss


@pytest.mark.parametrize(
    "settings",
    [
        {"every_n_train_steps": 3, "save_on_train_epoch_end": True},
        {"train_time_interval": timedelta(0), "save_on_train_epoch_end": True},  # a save at every step
        {"every_n_train_steps": 4, "monitor": "val/loss"},  # deferred to the validation after the step
    ],
)
@pytest.mark.parametrize("model", [TwoMoonsClassifier, ManualTwoMoons])
@pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization")
def test_periodic_checkpoint_saves_on_the_steps_lightnings_does(
    tmp_path: Path, settings: dict[str, Any], model: type[L.LightningModule]
) -> None:
    saved = {}
    for callback in (PeriodicCheckpoint, ModelCheckpoint):
        folder = tmp_path / callback.__name__
        checkpoint = callback(dirpath=folder, filename="{step}", save_top_k=-1, save_last=True, **settings)
        trainer = L.Trainer(max_steps=13, val_check_interval=5, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, callbacks=[checkpoint])  # fmt: skip
        trainer.fit(model(), TwoMoonsDataModule())
        saved[callback] = sorted(p.name for p in folder.iterdir())
    assert saved[PeriodicCheckpoint] == saved[ModelCheckpoint]
    if model is ManualTwoMoons and "train_time_interval" in settings:
        assert saved[ModelCheckpoint] == ["last.ckpt"]  # Lightning's manual-optimization branch saves by steps only
    else:
        assert len(saved[ModelCheckpoint]) > 2


def test_null_profiler_is_a_transparent_context() -> None:
    profiler = NullProfiler()
    with profiler.profile("outer"), profiler.profile("inner"):  # shared, reentrant
        pass
    with pytest.raises(KeyError), profiler.profile("step"):  # exceptions pass through, as with Lightning's
        raise KeyError("boom")
    assert profiler.summary() == ""


def test_null_profiler_spares_lightning_the_callbacks_empty_step_hooks(tmp_path: Path) -> None:
    """Lightning calls no step hook a callback inherits empty, still calls the ones it overrides, and calls every
    hook again once the run is over. Fails when a Lightning upgrade stops skipping a hook that is not callable."""

    class Counts(L.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            ends.append(1)

    class Idle(L.Callback):  # every step hook inherited, empty
        pass

    ends: list[int] = []
    counts, idle, profiler = Counts(), Idle(), NullProfiler()
    trainer = L.Trainer(max_steps=7, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[counts, idle],
                        profiler=profiler, default_root_dir=tmp_path)  # fmt: skip
    profiler.attach(trainer)
    with mock.patch.object(NullProfiler, "profile", autospec=True, side_effect=NullProfiler.profile) as profile:
        trainer.fit(TwoMoonsClassifier(), TwoMoonsDataModule())
    # Lightning names a callback's hook call "[Callback]<state_key>.<hook>"; the state key is the class's qualname.
    called = [c.args[1].rpartition(">.")[2] for c in profile.call_args_list if c.args[1].startswith("[Callback]")]
    assert len(ends) == 7 and called.count("Counts.on_train_batch_end") == 7
    assert not [name for name in called if name.startswith("Idle.") and name.split(".")[1] in STEP_HOOKS]
    assert "Counts.on_before_backward" not in called  # inherited empty
    assert "Idle.on_train_start" in called  # only the step hooks are spared
    assert not set(vars(idle)) & set(STEP_HOOKS) and not set(vars(counts)) & set(STEP_HOOKS)  # restored after fit
    profiler.attach(trainer)
    assert pickle.loads(pickle.dumps(profiler)).profile("step") is not None  # as ddp_spawn sends it, with its Trainer


def test_reuse_last_input_is_the_module_it_wraps() -> None:
    calls = []

    def squares(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        return x**2

    class Squares(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return squares(x)

    cached = ReuseLastInput(Squares())
    x = torch.arange(4.0)
    assert torch.equal(cached(x), x**2) and cached(x) is cached(x) and len(calls) == 1  # computed once
    x.add_(1)  # changed in place: computed again, and right
    assert torch.equal(cached(x), torch.arange(1.0, 5.0) ** 2) and len(calls) == 2
    y = torch.arange(4.0, requires_grad=True)  # a trained input: never reused
    cached(y), cached(y)
    assert len(calls) == 4
    with torch.inference_mode():  # validate/test/predict: no version counter, so computed each time
        z = torch.arange(3.0)
        assert torch.equal(cached(z), z**2)
    with pytest.raises(ValueError, match="without parameters"):
        ReuseLastInput(torch.nn.Linear(2, 2))
