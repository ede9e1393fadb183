"""scripts/check.py: the properties the template promises, measured on a project, and its verdicts.

The whole check runs once, on the digits (DataLoader workers, dropout, OneCycleLR: the hard case for exactness), as
a user runs it. Two projects that are not reproducible (tests/unreproducible.py) must fail, by name, on the
properties they break; and what the check cannot run ends in one line, leaving nothing behind.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import pytest

import preloaded
from helpers import DIGITS, EXAMPLES, REPO, TRAIN, subprocess_env
from litpoly.check import PROPERTIES, main
from litpoly.cli import DEFAULT_CONFIG

CHECK = REPO / "scripts" / "check.py"
TWOMOONS = ("--config", str(EXAMPLES / "twomoons" / "config.yaml"))


def table_rows(output: str) -> dict[str, list[str]]:
    """The table's rows by property: result, measured, tolerance, what was measured."""
    rows = {}
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line, maxsplit=4)
        if cells[0] in PROPERTIES and len(cells) == 5:
            rows[cells[0]] = cells[1:]
    return rows


def report(root: Path) -> tuple[str, dict[str, dict[str, object]]]:
    """The one report folder's ``report.txt``, and ``report.json``'s rows by property."""
    (folder,) = (root / "lightning_logs").glob("check_*")
    text = (folder / "report.txt").read_text()
    rows = json.loads((folder / "report.json").read_text())["rows"]
    return text, {row["property"]: row for row in rows}


@pytest.fixture
def check(tmp_path: Path, short_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Run the check in this process from ``tmp_path``, its temporary runs in ``short_tmp``: the folder, and where
    the runs go."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["check.py"])
    runs = short_tmp
    monkeypatch.setattr(tempfile, "tempdir", str(runs))
    return tmp_path, runs


@pytest.mark.slow
def test_the_digits_pass_every_property(tmp_path: Path, short_tmp: Path) -> None:
    """A user's command, in a process of its own: every property measured, every one passes, the table saved."""
    runs = short_tmp
    result = preloaded.run(
        [sys.executable, str(CHECK), *DIGITS.select], cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**subprocess_env(), "TMPDIR": str(runs)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = table_rows(result.stdout)
    assert list(rows) == list(PROPERTIES)
    assert {name: row[0] for name, row in rows.items()} == dict.fromkeys(PROPERTIES, "PASS")
    for exact in ("determinism", "resume", "checkpoint"):
        assert rows[exact][1:3] == ["0", "0"], exact  # bit for bit
    assert "mid-epoch (after step 36)" in rows["resume"][3] and "at an epoch's end (after step 24)" in rows["resume"][3]
    assert "2 processes × batch 64 against 1 × 128" in rows["ddp"][3] and "dropout off in both" in rows["ddp"][3]
    assert float(rows["ddp"][1]) <= 1e-10 and float(rows["gradients"][1]) <= 1e-6 and float(rows["learning"][1]) < 0.5
    text, saved = report(tmp_path)
    assert table_rows(text) == rows  # the report holds the very table printed
    assert saved["resume"]["measured"] == 0 and saved["resume"]["status"] == "PASS"
    assert result.stdout.rstrip().splitlines()[-2] == "PASS"
    assert not list(runs.glob("litpoly-check-*"))  # the runs' folder is gone


def test_noise_from_os_urandom_fails_determinism_and_resume(
    check: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, runs = check
    args = [*TWOMOONS, "--model", "unreproducible.NoisyClassifier", "--only", "determinism,resume"]
    assert main(args, TRAIN, DEFAULT_CONFIG) == 1
    out = capsys.readouterr().out
    rows = table_rows(out)
    assert list(rows) == ["determinism", "resume"]
    for name in rows:
        status, measured, tolerance, _ = rows[name]
        assert status == "FAIL" and float(measured) > 0 and tolerance == "0", name
    assert "two uninterrupted runs differ too" in rows["resume"][3]
    assert out.rstrip().splitlines()[-2] == "FAIL: determinism, resume"
    text, saved = report(root)
    assert table_rows(text) == rows and saved["determinism"]["measured"] > 0
    assert not list(runs.glob("litpoly-check-*"))


def test_an_unseeded_augmentation_in_dataloader_workers_fails_determinism_and_resume(
    check: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args = [*TWOMOONS, "--data", "unreproducible.JitteredMoons", "--only", "determinism,resume"]
    assert main(args, TRAIN, DEFAULT_CONFIG) == 1
    rows = table_rows(capsys.readouterr().out)
    for name in ("determinism", "resume"):
        assert rows[name][0] == "FAIL" and float(rows[name][1]) > 0, name


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--bogus", "1"], "error: unrecognized arguments: --bogus 1"),
        (["--only", "determinism,speed"], "error: argument --only: expected some of " + ", ".join(PROPERTIES)),
        (["--steps", "0"], "error: argument --steps: expected a positive integer, got '0'"),
        (["--ckpt_path", "last"], "error: --ckpt_path is not for the check: it starts and resumes its own runs"),
        (["validate"], "error: the check runs `fit`; got the subcommand 'validate'"),
        # Refused once the run is set up (the data module's own check), after the parser accepted it.
        ([*DIGITS.select, "--data.val_size", "5000"], "error: Expected `data.val_size` below the 1797 samples"),
    ],
    ids=["unknown-flag", "unknown-property", "zero-steps", "ckpt-path", "subcommand", "setting-refused-in-setup"],
)
def test_what_the_check_cannot_run_is_one_line_and_leaves_nothing(
    args: list[str], error: str, check: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root, runs = check
    assert main(args, TRAIN, DEFAULT_CONFIG) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(error), err
    assert not (root / "lightning_logs").exists() and not list(runs.glob("litpoly-check-*"))


def test_help_lists_the_checks_flags_and_where_the_others_go(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"], TRAIN, DEFAULT_CONFIG)
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--only" in out and "--steps" in out and "--epochs" in out and "--overfit_steps" in out
    assert "python scripts/train.py fit --help" in out


def test_a_password_in_the_command_reaches_no_file(check: tuple[Path, Path]) -> None:
    """The report records the command, with a tracking URL's credentials taken out (the check's own runs log
    nowhere: their logger is off)."""
    root, _ = check
    logger = ["--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger",
              "--trainer.logger.tracking_uri", "http://alice:s3cret@127.0.0.1:1"]  # fmt: skip
    assert main([*TWOMOONS, "--only", "checkpoint", *logger], TRAIN, DEFAULT_CONFIG) == 0
    _, saved = report(root)
    files = [path for path in root.rglob("*") if path.is_file()]
    assert files and not [path for path in files if b"s3cret" in path.read_bytes()]
    command = json.loads(next(root.glob("lightning_logs/check_*/report.json")).read_text())["command"]
    assert "http://…@127.0.0.1:1" in command and saved["checkpoint"]["status"] == "PASS"
