"""litpoly.compat: every Lightning or jsonargparse private and message text the run layer relies on, each checked
against the installed versions. A failure here means an upgrade changed one: fix it in litpoly/compat.py."""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import warnings
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from torch.utils.data import DataLoader
from tqdm import tqdm

from litpoly import compat
from litpoly.cli import DEFAULT_CONFIG, run
from litpoly.errors import SettingError


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["train.py"])  # LightningCLI warns when pytest's own argv is there too


def test_forget_train_loader_resets_what_estimated_stepping_batches_set_up(tmp_path: Path) -> None:
    """`estimated_stepping_batches` sets up the training loader early, through the fit loop (what makes the reset
    necessary), and the reset makes the fit loop set it up again."""
    from twomoons import TwoMoonsClassifier, TwoMoonsDataModule

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    model, data = TwoMoonsClassifier(), TwoMoonsDataModule()
    trainer.strategy.connect(model)
    trainer._data_connector.attach_data(model, datamodule=data)
    data.trainer = trainer
    data.setup("fit")
    assert trainer.fit_loop._combined_loader is None
    assert trainer.estimated_stepping_batches == 7  # sets the loader up, through the fit loop
    assert trainer.fit_loop._combined_loader is not None
    assert compat.forget_train_loader(trainer) is True
    assert trainer.fit_loop._combined_loader is None and trainer.fit_loop._data_fetcher is None
    assert compat.forget_train_loader(trainer) is False


def test_checkpoint_schedule_is_what_model_checkpoint_decided() -> None:
    assert compat.checkpoint_schedule(ModelCheckpoint(every_n_train_steps=7)) == (7, None)
    assert compat.checkpoint_schedule(ModelCheckpoint()) == (0, None)
    hourly = ModelCheckpoint(train_time_interval=timedelta(hours=1))
    assert compat.checkpoint_schedule(hourly) == (0, timedelta(hours=1))


def test_tqdm_is_the_bar_lightning_makes() -> None:
    assert issubclass(compat.Tqdm, tqdm)
    assert inspect.signature(TQDMProgressBar.init_validation_tqdm).return_annotation in ("Tqdm", compat.Tqdm)


def test_stateful_is_the_protocol_lightning_saves_loaders_by() -> None:
    class Positioned:
        def state_dict(self) -> dict[str, int]:
            return {}

        def load_state_dict(self, state: dict[str, int]) -> None:
            pass

    assert isinstance(Positioned(), compat.Stateful)
    assert not isinstance(DataLoader(range(3)), compat.Stateful)


@pytest.mark.parametrize(
    ("module", "text"),
    [
        ("lightning.pytorch.callbacks.model_checkpoint", "The dirpath has changed from"),
        ("lightning.pytorch.loops.prediction_loop", "Couldn't infer the batch indices"),
        ("lightning.fabric.loggers.csv_logs", "Experiment logs directory"),
        ("lightning.pytorch.trainer.setup", "GPU available:"),
        ("lightning.pytorch.cli", "LightningCLI's args parameter is intended to run from within Python"),
        ("lightning.pytorch.trainer.connectors.signal_connector", "Received SIGTERM"),
    ],
)
def test_the_messages_quieted_are_still_lightnings(module: str, text: str) -> None:
    """quiet_irrelevant_messages filters these by their text: an upgrade that rewords one makes it loud again."""
    assert text in inspect.getsource(importlib.import_module(module))


def test_the_seed_line_and_the_accelerator_list_are_quieted(caplog: pytest.LogCaptureFixture) -> None:
    compat.quiet_irrelevant_messages()
    with caplog.at_level(logging.INFO):
        seed_everything(3)
        L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    said = [record.getMessage() for record in caplog.records]
    assert not [m for m in said if "Seed set to" in m or m.startswith(("GPU available:", "TPU available:"))], said


def test_the_deprecation_lightning_triggers_is_ignored() -> None:
    compat.quiet_irrelevant_messages()
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use …", FutureWarning, stacklevel=1)
    assert not caught


def test_parse_error_line_cuts_jsonargparses_message_for_a_class_setting() -> None:
    with pytest.raises(SettingError) as error:
        run(["fit", "--model", "sinefit.PolynomialRegressor", "--model.lr", "fast", "--print_config"])
    assert str(error.value).startswith('Parser key "model.lr": ')
    assert "\n" not in str(error.value)


def test_parse_error_line_names_the_setting_a_linked_one_follows() -> None:
    # jsonargparse's message for a `link_arguments` target given on the command line names the link as
    # "argument SOURCE --> TARGET: ..." (then a type's repr): the line says which setting to give instead.
    with pytest.raises(SettingError) as error:
        run(["fit", "--early_stopping.monitor", "val/loss", "--print_config"], default_config=DEFAULT_CONFIG)
    assert str(error.value) == "`early_stopping.monitor` is set by `best.monitor`: give --best.monitor instead"


def test_innermost_finds_the_class_own_value_error() -> None:
    with pytest.raises(SettingError) as error:
        run(["fit", "--model.lr", "-1", "--trainer.max_steps", "1"], default_config=DEFAULT_CONFIG)
    assert str(error.value) == "Expected `model.lr` to be a positive finite number (or null for the default), got -1.0"


def test_the_subcommands_help_is_whole_sentences(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        run(["--help"])
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in ("Train the model, validating it as the config says.", "Evaluate a checkpoint on the test data."):
        assert line in out


def test_the_typed_numbers_weights_only_reads_allow_are_still_jsonargparses() -> None:
    import jsonargparse.typing

    from litpoly.checkpoint_file import SAFE_TYPES

    for kind in SAFE_TYPES:
        assert getattr(jsonargparse.typing, kind.__name__) is kind
        assert issubclass(kind, int | float)
    assert torch.serialization.get_safe_globals()  # registered on import of litpoly.checkpoint_file


def test_lightningcli_would_read_ckpt_path_again_and_merges_as_we_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LightningCLI reads ``--ckpt_path`` a second time right after ``parse_arguments`` (to merge the model's
    settings from it): the command line holds the path back from that step and merges them itself, from the checkpoint
    it read and checked. Checked both ways: with our merge the file is read once; without it, Lightning reads it again
    and merges the very settings ours did (the checkpoint's ``lr``, not the default config's)."""
    from litpoly.cli.litcli import LitCLI

    root = ["--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    run(["fit", "--trainer.max_steps", "3", "--model.lr", "0.0125", *root], DEFAULT_CONFIG)
    ckpt = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    reads: list[str] = []
    load = torch.load

    def counted(f: object, *args: object, **kwargs: object) -> object:
        if Path(str(f)).resolve() == ckpt.resolve():
            reads.append("read")
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    command = ["validate", "--ckpt_path", str(ckpt), *root]
    ours = run(command, DEFAULT_CONFIG).config["validate"].model
    assert len(reads) == 1 and ours.init_args.lr == 0.0125
    reads.clear()
    monkeypatch.setattr(LitCLI, "_merge_model_settings", lambda self, subcommand, checkpoint: None)
    lightnings = run(command, DEFAULT_CONFIG).config["validate"].model
    assert len(reads) == 2, "LightningCLI no longer reads ckpt_path after parse_arguments: drop the hold-back"
    assert lightnings == ours


def test_lean_results_are_lightnings_collection_with_a_move_only_when_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LitTrainer's loops hold LeanResults; Lightning's `log` still moves a value's store to the value's device
    (what LeanResults skips when nothing is elsewhere); and a run logs the same numbers under either collection."""
    from lightning.pytorch.trainer.connectors.logger_connector import result

    assert "self[key].to(value.device)" in inspect.getsource(result._ResultCollection.log)
    assert "self[key] = metric" in inspect.getsource(result._ResultCollection.log)
    trainer = compat.LitTrainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path)
    for loop in (trainer.fit_loop.epoch_loop, trainer.fit_loop.epoch_loop.val_loop, trainer.validate_loop,
                 trainer.test_loop):  # fmt: skip
        assert type(loop._results) is compat.LeanResults

    moves: list[object] = []
    real_move = result.apply_to_collection
    monkeypatch.setattr(result, "apply_to_collection", lambda *a, **k: moves.append(a[0]) or real_move(*a, **k))
    collection = compat.LeanResults(training=True)
    for value in (1.0, 2.0, 4.0):
        collection.log("training_step", "loss", torch.tensor(value), on_step=False, on_epoch=True, batch_size=2)
    assert not moves  # the store is made on the CPU, where the values are: nothing to move
    stored = collection["training_step.loss"]
    assert stored.compute().item() == pytest.approx(7 / 3)
    stored.to(torch.device("meta"))  # a device it is not on: moved, by Lightning's own code
    assert len(moves) == 1 and stored.value.device.type == "meta"

    def logged(trainer_class: type[L.Trainer]) -> dict[str, float]:
        class Logs(L.LightningModule):
            def __init__(self) -> None:
                super().__init__()
                self.w = torch.nn.Parameter(torch.ones(1))

            def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
                loss = ((self.w * batch) ** 2).mean()
                self.log("step_loss", loss, on_step=True, on_epoch=False)
                self.log("epoch_loss", loss, on_step=False, on_epoch=True, batch_size=len(batch))
                return loss

            def configure_optimizers(self) -> torch.optim.Optimizer:
                return torch.optim.SGD(self.parameters(), lr=0.1)

        seed_everything(0)
        trainer = trainer_class(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
        data = DataLoader(torch.arange(7.0).unsqueeze(1) / 7, batch_size=3)  # batches of 3, 3 and 1
        trainer.fit(Logs(), data)
        return {name: value.item() for name, value in trainer.callback_metrics.items()}

    lean = logged(compat.LitTrainer)
    assert lean.keys() == {"step_loss", "epoch_loss"} and lean == logged(L.Trainer)


def test_where_nvml_is_missing_an_optimizer_step_searches_for_no_library(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning still sets the NVML check on import; where NVML's library cannot be loaded, the Trainer the run layer
    makes unsets it, an RMSprop step then looks for no library, and ``torch.cuda.is_available()`` answers as before.
    Where NVML loads, the check stays."""
    import lightning.fabric

    assert f'os.environ["{compat.NVML_CHECK}"] = "1"' in inspect.getsource(lightning.fabric)
    loads: list[str] = []

    def missing(name: str, *args: object, **kwargs: object) -> object:
        loads.append(name)
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr("ctypes.CDLL", missing)
    monkeypatch.setenv(compat.NVML_CHECK, "1")
    weights = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.RMSprop([weights], lr=1e-3)

    def steps() -> int:
        loads.clear()
        for _ in range(5):
            optimizer.zero_grad()
            (weights**2).sum().backward()
            optimizer.step()
        return loads.count("libnvidia-ml.so.1")

    answer = torch.cuda.is_available()
    cuda_build = bool(torch.version.cuda) and not torch.version.hip
    assert steps() == (5 if cuda_build else 0)  # torch's cost on a CUDA build: one failed search a step
    compat.LitTrainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert (compat.NVML_CHECK in os.environ) is not cuda_build
    assert steps() == 0
    assert torch.cuda.is_available() is answer

    monkeypatch.setattr("ctypes.CDLL", lambda name, *args, **kwargs: object())  # NVML loads: nothing changes
    monkeypatch.setenv(compat.NVML_CHECK, "1")
    assert compat.cuda_check_without_nvml() is False
    assert os.environ[compat.NVML_CHECK] == "1"
