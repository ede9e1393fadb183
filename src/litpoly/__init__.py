"""litpoly: a PyTorch Lightning template that fits a polynomial to sin(x), checked against numpy."""

from litpoly.data import SineDataModule
from litpoly.model import PolynomialRegressor

__all__ = ["PolynomialRegressor", "SineDataModule"]
