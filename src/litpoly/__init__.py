"""litpoly's run layer: the command line, run safety, checkpoints, console, loggers and speed-ups.

It works for any LightningModule and LightningDataModule, relying only on what Lightning itself defines;
it imports nothing from the example (:mod:`sinefit`), which a test checks. ``python scripts/train.py``
is its entry point (:func:`litpoly.cli.main`).
"""
