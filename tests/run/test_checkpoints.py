"""``--ckpt_path`` for both problems: unusable checkpoints and settings that differ from the checkpoint's."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from helpers import PROBLEMS, Problem, RunCLI, load_checkpoint, run_folder


class _Payload:
    """Unpickling this would create a file: what a malicious checkpoint could do if it were loaded with code."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.target}",)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_unusable_checkpoints_are_one_line_errors(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli("fit", *problem.select, *problem.quick)
    good = run_folder(tmp_path) / "checkpoints" / "last.ckpt"
    truncated, text, payload = tmp_path / "truncated.ckpt", tmp_path / "notes.ckpt", tmp_path / "payload.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text.write_text("not a checkpoint")
    created = tmp_path / "created-by-the-checkpoint"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(created)}}, payload, pickle_module=pickle)
    key, value, _ = problem.reshape
    other = next(p for p in PROBLEMS if p is not problem)
    cases = [
        (["--ckpt_path", "nowhere.ckpt"], "no such checkpoint file: nowhere.ckpt"),
        (["--ckpt_path", str(truncated)], "is not a readable checkpoint (truncated or corrupt?)"),
        (["--ckpt_path", str(text)], "is not a readable checkpoint"),
        (["--ckpt_path", str(payload)], "holds objects that are not allowed to load (posix.system)"),
        (["--ckpt_path", str(good), f"--model.{key}", value], f"`model.{key}` {value}"),
        (["--ckpt_path", str(good), "--model.foo", "1"], "'foo' is not accepted"),
    ]
    capsys.readouterr()
    for subcommand in ("fit", "validate"):
        for args, message in cases:
            with pytest.raises(SystemExit) as exit_info:
                run_cli(subcommand, *problem.select, *args)
            assert exit_info.value.code == 2
            assert message in one_error_line(capsys), (subcommand, args)
        # Another problem's settings against this checkpoint: the class differs, and that is said.
        with pytest.raises(SystemExit):
            run_cli(subcommand, *other.select, "--ckpt_path", str(good))
        assert "holds a " in one_error_line(capsys)
    assert not created.exists()  # the payload never ran
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]  # nothing new written


def test_a_setting_the_weights_cannot_take_is_an_error_naming_it(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli("fit", *problem.select, *problem.quick)
    key, value, weight = problem.reshape
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"  # by path: `last` means a run of these settings
    capsys.readouterr()
    with pytest.raises(SystemExit):
        run_cli("validate", *problem.select, "--ckpt_path", str(last), f"--model.{key}", value)
    line = one_error_line(capsys)
    assert f"holds weights that do not fit the model `model.{key}` {value} makes ({weight}:" in line
    assert "leave it out to use the checkpoint's" in line


def test_a_setting_the_weights_survive_is_a_warning_and_the_checkpoints_is_used(
    problem: Problem, run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli("fit", *problem.select, *problem.quick)
    key, value = problem.survives
    saved = load_checkpoint(run_folder(tmp_path) / "checkpoints" / "last.ckpt")["hyper_parameters"][key]
    capsys.readouterr()
    last = run_folder(tmp_path) / "checkpoints" / "last.ckpt"  # by path: `last` means a run of these settings
    cli = run_cli("validate", *problem.select, "--ckpt_path", str(last), f"--model.{key}", value)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(f"Warning: `model.{key}` ")
    assert warnings[0].endswith(
        f" is not used: the checkpoint's model was made with {saved!r}, and LightningCLI restores the model's "
        "settings with its weights."
    )
    assert cli.model.hparams[key] == saved


def test_jsonargparse_typed_numbers_in_a_checkpoint_load_weights_only(tmp_path: Path) -> None:
    """A model that hands its `lr: PositiveFloat` straight to its optimizer (the digits example does) checkpoints a
    PositiveFloat; it holds a number and no code, so the weights-only read takes it (and nothing else new)."""
    from jsonargparse.typing import PositiveFloat, PositiveInt

    from litpoly.checkpoint_file import read_checkpoint

    path = tmp_path / "typed.ckpt"
    torch.save({"state_dict": {}, "optimizer_states": [{"lr": PositiveFloat(0.5), "n": PositiveInt(3)}]}, path)
    state = read_checkpoint(path)["optimizer_states"][0]
    assert state == {"lr": 0.5, "n": 3} and isinstance(state["lr"], PositiveFloat)
