"""The README and docs/ are checked, not hoped: the output they show is the output the commands print, every TensorBoard
tag and run-folder file they name exists after a run, their links lead somewhere, and the help texts are whole
sentences.

A block of shown output is marked ``<!-- readme-output: NAME -->`` just above its fence; its ``$ python
scripts/train.py …`` lines are the commands, the lines under each what it prints (``...`` skips lines). A shown line
matches a printed one when their words are equal and their numbers agree to 1e-4 relative — the last digits vary
with the torch version and the machine, as the docs say — and numbers below 1e-5 (rounding differences, which vary
most) only in being below 1e-5.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import REPO, RunCLI, run_folder

README = (REPO / "README.md").read_text()
DOCS = {path: path.read_text() for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]}
TRAIN = "$ python scripts/train.py "
#: The folder the docs show as the run's working folder.
SHOWN_ROOT = "/home/you/litpoly"
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def section(text: str, title: str) -> str:
    """The text under ``## title`` (up to the next ``## ``)."""
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def shown_blocks(name: str) -> list[list[str]]:
    """The lines of every block marked ``<!-- readme-output: name -->``, in the README and docs/."""
    pattern = rf"<!-- readme-output: {name} -->\n```text\n(.*?)```"
    return [match.splitlines() for text in DOCS.values() for match in re.findall(pattern, text, re.S)]


def sessions(lines: list[str]) -> list[tuple[list[str], list[str]]]:
    """A shown block as (the command's arguments after ``train.py``, the lines shown under it)."""
    runs: list[tuple[list[str], list[str]]] = []
    for line in lines:
        if line.startswith(TRAIN):
            runs.append((shlex.split(line.removeprefix(TRAIN)), []))
        else:
            runs[-1][1].append(line)
    return runs


def same_number(shown: str, printed: str) -> bool:
    a, b = float(shown), float(printed)
    return abs(b) < 1e-5 if abs(a) < 1e-5 else math.isclose(a, b, rel_tol=1e-4)


def same_line(shown: str, printed: str) -> bool:
    if NUMBER.sub("#", shown).split() != NUMBER.sub("#", printed).split():
        return False
    return all(map(same_number, NUMBER.findall(shown), NUMBER.findall(printed)))


def assert_shown(shown: list[str], printed: str, root: Path) -> None:
    """Every shown line (but ``...``) is printed, in the order shown."""
    for folder in {str(root.resolve()), str(root)}:
        printed = printed.replace(folder, SHOWN_ROOT)
    lines = iter(printed.replace("\r", "\n").splitlines())
    for expected in (line for line in shown if line.strip() != "..."):
        assert any(same_line(expected, line) for line in lines), f"not printed (in this order): {expected!r}\n{printed}"


def named_tags() -> set[str]:
    """The tags docs/tracking.md's tables and docs/checks.md name: `group/name`, `group/*`, `coef/a` … `coef/d`."""
    text = DOCS[REPO / "docs" / "tracking.md"] + DOCS[REPO / "docs" / "checks.md"]
    tags = set(re.findall(r"`([a-z_]+/[a-z_0-9*]+)`", text))
    for first, last in re.findall(r"`([a-z_]+/[a-z])` … `[a-z_]+/([a-z])`", text):  # a range of coefficients
        tags |= {f"{first[:-1]}{chr(c)}" for c in range(ord(first[-1]), ord(last) + 1)}
    return tags


@pytest.mark.slow
def test_the_default_fit_prints_what_the_docs_show_and_writes_what_they_name(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli("fit")  # the quick start's run: 2400 steps, so the periodic checkpoint at step 2000 exists too
    printed = "".join(capsys.readouterr())
    blocks = shown_blocks("fit")
    assert len(blocks) == 2  # the quick start's and the parity section's
    for block in blocks:
        [(args, shown)] = sessions(block)
        assert args == ["fit"]
        assert_shown(shown, printed, tmp_path)
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
    assert any(s.startswith("lr-") for s in scalars)  # Lightning's LearningRateMonitor: lr-<Optimizer>
    tracking = DOCS[REPO / "docs" / "tracking.md"]
    text_rows = [line for line in tracking.splitlines() if line.startswith("| TEXT |")]
    named_texts = {name for row in text_rows for name in re.findall(r"`(\w+)`", row)}
    assert {"config", "equation", "parity"} <= named_texts <= texts
    assert "fit" in images
    # The files of the run folder, as the quick start describes them.
    files = {p.relative_to(run_folder(tmp_path)).as_posix() for p in run_folder(tmp_path).rglob("*") if p.is_file()}
    for name in re.findall(r"`((?:checkpoints/)?[\w=.-]+\.(?:yaml|ckpt|csv|png))`", section(README, "Quick start")):
        assert any(f == name or f.endswith(f"/{name}") for f in files), (name, files)
    predicted = {p.name for p in run_folder(tmp_path, 1).iterdir()}
    assert {"predictions.csv", "predictions.png", "hparams.yaml"} <= predicted


def test_a_run_that_goes_wrong_prints_what_the_readme_shows(
    run_cli: RunCLI, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's bad settings and diverged run: one line each, and the exit statuses its table gives."""
    [block] = shown_blocks("errors")
    codes = []
    for args, shown in sessions(block):
        with pytest.raises(SystemExit) as stop:
            run_cli(*args)
        codes.append(stop.value.code)
        assert_shown(shown, "".join(capsys.readouterr()), tmp_path)
    assert codes == [2, 2, 1]  # two bad settings, then a diverged run
    assert "| 2 | a bad setting" in README and "| 1 | a diverged run" in README


def test_the_shown_output_is_matched_strictly() -> None:
    """The matching the checks above rely on: words exactly, figures to their last shown digits but one."""
    assert same_line("2399 8.839693069458008", "2399 8.839692115783691")
    assert not same_line("2399 8.8396", "2399 8.8496")
    assert not same_line("Verdict: MATCH (x)", "Verdict: MISMATCH (x)")
    assert same_line("    99  3.43e-07", "    99  9.9e-08")  # rounding differences: only their size
    assert not same_line("steps 0-9", "steps 0-19")


def test_every_link_in_the_docs_leads_somewhere() -> None:
    """Relative links name files that exist, and ``#anchors`` headings of the page they point at."""
    for path, text in DOCS.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            page = (path.parent / file).resolve() if file else path
            assert page.exists(), (path.name, target)
            if anchor:
                headings = re.findall(r"^#+ (.*)$", page.read_text(), re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, (path.name, target, sorted(slugs))


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
