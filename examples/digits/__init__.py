"""The third problem: handwritten digits, read from files on disk by DataLoader worker processes.

The worked example for "my data does not fit on the device": scikit-learn's bundled 8x8 digits are written once
to ``.npy`` files (:meth:`DigitsDataModule.prepare_data`, nothing downloaded), and a standard ``DataLoader`` with
``shuffle=True`` and worker processes reads them, memory-mapped, sample by sample. The model is a small MLP with
dropout, trained with AdamW and a OneCycleLR schedule sized by ``trainer.estimated_stepping_batches`` — the usual
recipe, and the one that breaks exact resume in Lightning alone (see :mod:`litpoly.callbacks.resume`)::

    python scripts/train.py fit --config examples/digits/config.yaml
"""

from digits.data import DigitsDataModule, DigitsFiles
from digits.model import DigitsClassifier

__all__ = ["DigitsClassifier", "DigitsDataModule", "DigitsFiles"]
