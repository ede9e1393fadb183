"""Loaders for the run layer: :class:`StepLoader` for data that fits on the device, and the resumable rebuild of a
standard ``DataLoader`` (:mod:`litpoly.data.resumable`)."""

from litpoly.data.step_loader import Batch, StepLoader, on_device, shard

__all__ = ["Batch", "StepLoader", "on_device", "shard"]
