"""Export for deployment: ONNX and torch.export files that give the model's own predictions, without its code."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, Problem, RunCLI, held_out, run_folder, subprocess_env

#: Run in a process that imports neither the run layer nor any model: only onnxruntime and torch.
READ_BACK = """
import sys, numpy as np, onnxruntime, torch
x = np.load(sys.argv[1])
onnx = onnxruntime.InferenceSession(sys.argv[2]).run(None, {"input": x})[0]
program = torch.export.load(sys.argv[3]).module()(torch.from_numpy(x)).detach().numpy()
assert not {"litpoly", "sinefit", "twomoons", "digits"} & {name.split(".")[0] for name in sys.modules}
np.save(sys.argv[4], np.stack([onnx, program]))
"""


@pytest.fixture
def export_main(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from export import main  # scripts/export.py

    return main


def test_exported_files_give_the_models_predictions_without_its_code(
    problem: Problem,
    run_cli: RunCLI,
    tmp_path: Path,
    export_main,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    cli = run_cli("fit", *problem.select, *problem.quick)
    # The classes from the problem's own config, as train.py read them (the sine example's: the default config's).
    config = Path(problem.select[problem.select.index("--config") + 1]) if "--config" in problem.select else None
    export_main("last", config=config)
    folder = run_folder(tmp_path) / "export"
    said = capsys.readouterr().out
    assert f"Wrote {folder / 'model.onnx'}" in said
    assert "from the model's own output on" in said and " inputs of the run's validation data: " in said
    x = held_out(cli.trainer.val_dataloaders)[0].astype(np.float32)  # the held-out inputs
    with torch.no_grad():
        expected = cli.model.eval()(torch.from_numpy(x)).numpy()  # the model's own predictions (dropout off)
    np.save(tmp_path / "x.npy", x)
    files = [tmp_path / "x.npy", folder / "model.onnx", folder / "model.pt2", tmp_path / "out.npy"]
    result = subprocess.run([sys.executable, "-c", READ_BACK, *map(str, files)], capture_output=True, text=True,
                            timeout=120, env=subprocess_env())  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    onnx, program = np.load(tmp_path / "out.npy")
    # float32 rounding, relative to the size of the output (onnxruntime sums in another order than torch)
    np.testing.assert_allclose(onnx, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(program, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ckpt_path": "nowhere.ckpt"}, "error: `ckpt_path`: no such checkpoint file: nowhere.ckpt"),
        ({"ckpt_path": "last", "out": Path("/proc/not-here")}, "error: `out` /proc/not-here cannot be written"),
        ({"ckpt_path": "last", "model": "twomoons.TwoMoonsClassifier"}, "holds a sinefit.PolynomialRegressor"),
        ({"ckpt_path": "last", "config": REPO / "examples" / "twomoons" / "config.yaml"}, "holds a sinefit.Polynomial"),
        ({"ckpt_path": "last", "config": Path("missing.yaml")}, "error: `config` missing.yaml cannot be read: "),
    ],
)
def test_bad_input_is_one_line(  # type: ignore[no-untyped-def]
    kwargs: dict[str, object], message: str, run_cli: RunCLI, tmp_path: Path, export_main, capsys
) -> None:
    run_cli("fit", "--trainer.max_steps", "5", "--model.parity", "false")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        export_main(**kwargs)
    assert exit_info.value.code == 2
    out = capsys.readouterr()
    lines = (out.out + out.err).strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (run_folder(tmp_path) / "export").exists()


def test_the_script_takes_the_classes_from_the_training_config(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``export.py --config`` is the training config (what ``train.py fit --config`` was given), and a bad flag is
    one line: the script's own command line, run as ``python scripts/export.py`` runs it."""
    config = REPO / "examples" / "twomoons" / "config.yaml"
    run_cli("fit", "--config", str(config), "--trainer.max_epochs", "1")
    capsys.readouterr()
    script = str(REPO / "scripts" / "export.py")
    monkeypatch.setattr("sys.argv", [script, "--ckpt_path", "last", "--config", str(config), "--onnx", "false"])
    runpy.run_path(script, run_name="__main__")
    assert f"Wrote {run_folder(tmp_path) / 'export' / 'model.pt2'}" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", [script, "--ckpt_path", "last", "--bogus", "1"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: unrecognized arguments: --bogus 1"]


def test_a_data_class_the_run_records_is_never_imported(  # type: ignore[no-untyped-def]
    run_cli: RunCLI, tmp_path: Path, export_main, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's config.yaml gives the data module's settings, not its class: a class it names that the command
    does not is never imported (a module that would leave a file behind if it were), and the files are checked on
    the example input instead, saying why."""
    run_cli("fit", "--trainer.max_steps", "5", "--model.parity", "false")
    (tmp_path / "planted.py").write_text("import pathlib\npathlib.Path('imported').touch()\nclass Data: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = run_folder(tmp_path) / "config.yaml"
    config.write_text(config.read_text().replace("sinefit.SineDataModule", "planted.Data"))
    capsys.readouterr()
    export_main("last", onnx=False)
    said = capsys.readouterr().out
    assert "example input (the run's config names the data module planted.Data, not sinefit.SineDataModule)" in said
    assert not (tmp_path / "imported").exists()
