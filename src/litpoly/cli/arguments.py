"""What a command line gives, read before it is parsed.

Whether the project's default config applies must be known before LightningCLI builds its parser (it is a parser
default), and which model settings the user gave (rather than took from a default) is not kept by the parse: both
are read here from the words and the ``--config`` files, with the YAML loader the parser itself uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from litpoly import safe_yaml


def _config_files(args: Sequence[str]) -> list[dict[str, Any]]:
    """The YAML files ``--config``/``-c`` name in ``args``, loaded (files the parser will refuse are skipped:
    it reports them itself)."""
    files = []
    for i, arg in enumerate(args):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg in ("--config", "-c") and i + 1 < len(args):
            path = args[i + 1]
        if path is None:
            continue
        try:
            content = safe_yaml.load(Path(path).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(content, dict):
            files.append(content)
    return files


def names_a_class(args: Sequence[str]) -> bool:
    """Whether ``args`` pick their own model or data class: ``--model CLASS``, ``--data CLASS``, or a config
    file whose ``model`` or ``data`` has a ``class_path`` (or is a class name)."""
    for arg in args:
        if arg in ("--model", "--data") or arg.startswith(("--model=", "--data=")):
            return True
    for config in _config_files(args):
        for group in ("model", "data"):
            value = config.get(group)
            if isinstance(value, str) or (isinstance(value, dict) and "class_path" in value):
                return True
    return False


def given_keys(args: Sequence[str], group: str) -> set[str]:
    """The settings of ``group`` (``model``, ``data``) that ``args`` give, by flag or in a config file."""
    keys = set()
    for arg in args:
        if arg.startswith(f"--{group}."):
            key = arg[len(group) + 3 :].split("=", 1)[0]
            keys.add(key.removeprefix("init_args.").split(".", 1)[0])
    for config in _config_files(args):
        value = config.get(group)
        if isinstance(value, dict):
            init_args = value.get("init_args", {}) if "class_path" in value else value
            keys |= set(init_args or {})
    return keys
