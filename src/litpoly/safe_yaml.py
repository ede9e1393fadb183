"""YAML that cannot expand without bound: every config file, flag value and sweep space the command line reads.

A YAML alias (``*a``) repeats what its anchor (``&a``) names without copying it in the file, so a few hundred bytes
of nested aliases stand for billions of values (the "billion laughs"): PyYAML builds them as shared objects, but
jsonargparse copies and walks the values it parses, and memory runs out long before any error. :func:`load` counts
the values a document stands for on PyYAML's node graph, where each alias is one shared node, so counting is as
cheap as the file is small, and refuses a document that stands for more than :data:`MAX_VALUES` before anything is
built. :func:`install` makes it jsonargparse's YAML loader, through jsonargparse's own ``set_loader``.
"""

from __future__ import annotations

from typing import Any

import jsonargparse
import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

#: The most values (scalars, lists and mappings, counted once per place they appear) a YAML document may stand for.
MAX_VALUES = 1_000_000


class TooManyValues(yaml.YAMLError):  # type: ignore[misc]  # types-PyYAML is not installed
    """A YAML document whose aliases expand to more than :data:`MAX_VALUES` values."""


def check_expansion(stream: str) -> None:
    """Refuse a YAML document that stands for more than :data:`MAX_VALUES` values once its aliases are expanded.

    Example:
        >>> check_expansion("a: &x [1, 2]\\nb: [*x, *x]")  # a few values: fine
        >>> bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\\n" + "".join(
        ...     f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\\n" for p, n in zip("abcdefg", "bcdefgh")
        ... )
        >>> check_expansion(bomb)
        Traceback (most recent call last):
        ...
        litpoly.safe_yaml.TooManyValues: the YAML's aliases (*name) expand to more than 1000000 values
    """
    if "*" not in stream:  # no alias: the document is no bigger than its text
        return
    node = yaml.compose(stream, Loader=yaml.SafeLoader)
    if node is not None and _count(node, {}) > MAX_VALUES:
        raise TooManyValues(f"the YAML's aliases (*name) expand to more than {MAX_VALUES} values")


def _count(node: Node, counted: dict[int, int]) -> int:
    """The values ``node`` stands for, each shared node counted once per place (memoized by identity)."""
    if id(node) in counted:
        return counted[id(node)]
    counted[id(node)] = MAX_VALUES + 1  # a node that contains itself expands forever
    total = 1
    if isinstance(node, SequenceNode):
        total += sum(_count(child, counted) for child in node.value)
    elif isinstance(node, MappingNode):
        total += sum(_count(key, counted) + _count(value, counted) for key, value in node.value)
    counted[id(node)] = min(total, MAX_VALUES + 1)  # no need for exact counts past the limit
    return counted[id(node)]


def load(stream: str) -> Any:
    """``yaml.safe_load``, refusing alias explosions (:func:`check_expansion`)."""
    check_expansion(stream)
    return yaml.safe_load(stream)


def install() -> None:
    """Make jsonargparse's YAML loader check the expansion first (idempotent): config files, ``--config``, flag
    values and anything else jsonargparse parses as YAML."""
    current = jsonargparse.get_loader("yaml")
    if getattr(current, "checks_expansion", False):
        return

    def checked(stream: str) -> Any:
        check_expansion(stream)
        return current(stream)

    checked.checks_expansion = True  # type: ignore[attr-defined]
    jsonargparse.set_loader("yaml", checked, exceptions=(yaml.YAMLError,))
