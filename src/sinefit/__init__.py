"""The example litpoly ships: fit a polynomial to sin(x), and prove every number against numpy.

Replace this package with your own model and data (see the README's "Start your own project"); the run
layer in :mod:`litpoly` does not import it.
"""

from sinefit.data import SineDataModule
from sinefit.model import PolynomialRegressor

__all__ = ["PolynomialRegressor", "SineDataModule"]
