"""The README is checked, not hoped: every TensorBoard tag and run-folder file it names exists after a run, and its
help texts are whole sentences."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REPO, RunCLI, run_folder

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    """The README's text under ``## title`` (up to the next ``## ``)."""
    start = README.index(f"## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def named_tags() -> set[str]:
    """The tags the TensorBoard section and the numpy section name: `group/name`, `group/*`, `coef/a` … `coef/d`."""
    text = section("TensorBoard") + section("Checked against numpy")
    tags = set(re.findall(r"`([a-z_]+/[a-z_0-9*]+)`", text))
    for first, last in re.findall(r"`([a-z_]+/[a-z])` … `[a-z_]+/([a-z])`", text):  # a range of coefficients
        tags |= {f"{first[:-1]}{chr(c)}" for c in range(ord(first[-1]), ord(last) + 1)}
    return tags


@pytest.mark.slow
def test_every_tag_and_file_the_readme_names_exists_after_a_run(run_cli: RunCLI, tmp_path: Path) -> None:
    run_cli("fit")  # the quick start's run: 2400 steps, so the periodic checkpoint at step 2000 exists too
    run_cli("predict", "--ckpt_path", "last")
    events = EventAccumulator(str(run_folder(tmp_path)), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    events.Reload()
    scalars, images = set(events.Tags()["scalars"]), set(events.Tags()["images"])
    texts = {tag.removesuffix("/text_summary") for tag in events.Tags()["tensors"]}
    tags = named_tags()
    assert {"train/loss", "coef/c", "optimum/*", "parity/match"} <= tags  # the parsing found what it should
    for tag in tags:
        if tag.endswith("/*"):
            assert any(s.startswith(tag[:-1]) for s in scalars), tag
        else:
            assert tag in scalars, tag
    text_rows = [line for line in section("TensorBoard").splitlines() if line.startswith("| TEXT |")]
    named_texts = {name for row in text_rows for name in re.findall(r"`(\w+)`", row)}
    assert {"config", "equation", "parity"} <= named_texts <= texts
    assert "fit" in images
    # The files of the run folder, as the quick start describes them.
    files = {p.relative_to(run_folder(tmp_path)).as_posix() for p in run_folder(tmp_path).rglob("*") if p.is_file()}
    for name in re.findall(r"`((?:checkpoints/)?[\w=.-]+\.(?:yaml|ckpt|csv|png))`", section("Quick start")):
        assert any(f == name or f.endswith(f"/{name}") for f in files), (name, files)
    predicted = {p.name for p in run_folder(tmp_path, 1).iterdir()}
    assert {"predictions.csv", "predictions.png", "hparams.yaml"} <= predicted


def test_help_sentences_are_whole(run_cli: RunCLI, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run_cli("--help")
    assert stop.value.code == 0
    out = capsys.readouterr().out
    subcommands = out[out.index("Available subcommands") :]
    entries = re.findall(r"^    (fit|validate|test|predict)\s+(.*?)(?=^    \w|\Z)", subcommands, re.M | re.S)
    assert [name for name, _ in entries] == ["fit", "validate", "test", "predict"]
    for name, text in entries:
        assert " ".join(text.split()).endswith("."), (name, text)
