"""How the coefficients of a polynomial are named and printed, as in the seed notebook."""

from __future__ import annotations

import string


def coefficient_names(degree: int) -> list[str]:
    """Names of the coefficients, lowest power first: ``a, b, c, d`` for a cubic (``w0, w1, …`` past 25).

    Example:
        >>> coefficient_names(3)
        ['a', 'b', 'c', 'd']
    """
    if degree < len(string.ascii_lowercase):
        return list(string.ascii_lowercase[: degree + 1])
    return [f"w{k}" for k in range(degree + 1)]


def named_coefficients(coefficients: list[float]) -> dict[str, float]:
    """The coefficients by name, lowest power first.

    Example:
        >>> named_coefficients([0.5, -1.0, 2.0])
        {'a': 0.5, 'b': -1.0, 'c': 2.0}
    """
    return dict(zip(coefficient_names(len(coefficients) - 1), coefficients, strict=True))


def format_polynomial(coefficients: list[float]) -> str:
    """The seed's result line: ``y = a + b x + c x^2 + d x^3`` with the numbers filled in.

    Example:
        >>> format_polynomial([0.5, -1.0, 2.0])
        'y = 0.5 + -1.0 x + 2.0 x^2'
    """
    terms = [f"{c}" if k == 0 else f"{c} x" if k == 1 else f"{c} x^{k}" for k, c in enumerate(coefficients)]
    return "y = " + " + ".join(terms)
