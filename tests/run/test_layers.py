"""The two layers: the run layer (src/litpoly) imports nothing from the example (src/sinefit), and works without it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from helpers import EXAMPLES, REPO, subprocess_env


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_run_layer_imports_nothing_from_the_example() -> None:
    modules = sorted((REPO / "src" / "litpoly").rglob("*.py"))
    assert len(modules) >= 10
    for path in modules:
        example = {m for m in imported_modules(path) if m.split(".")[0] in ("sinefit", "twomoons")}
        assert not example, f"{path.name} imports {example}"


def test_the_run_layer_trains_the_second_problem_with_the_example_absent(tmp_path: Path) -> None:
    """In a process where importing `sinefit` fails, every run layer module imports and the two-moons problem
    trains, validates and predicts through run_command."""
    code = f"""
import importlib, pkgutil, sys
class NoExample:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "sinefit":
            raise ImportError("the example is absent")
sys.meta_path.insert(0, NoExample())
import litpoly
for module in pkgutil.iter_modules(litpoly.__path__):
    importlib.import_module("litpoly." + module.name)
from litpoly.cli import run as run_command
config = ["--config", {str(EXAMPLES / "twomoons" / "config.yaml")!r}, "--trainer.max_epochs", "2"]
config += ["--trainer.enable_progress_bar", "false"]
fit = run_command(["fit", *config])
run_command(["validate", *config, "--ckpt_path", "last"])
run_command(["predict", *config, "--ckpt_path", "last"])
assert "sinefit" not in sys.modules
print("trained", fit.trainer.global_step, "steps")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=subprocess_env()
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "trained 14 steps" in result.stdout
    assert (tmp_path / "lightning_logs" / "version_2" / "predictions.csv").is_file()
