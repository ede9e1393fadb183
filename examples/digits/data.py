"""The digits on disk: written once by ``prepare_data``, read sample by sample by the DataLoader's workers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from litpoly.errors import SettingError

FILES = ("images.npy", "labels.npy")


class DigitsFiles(Dataset[tuple[Tensor, Tensor]]):
    """The images and labels in ``folder``, memory-mapped: each worker process opens the files on first use and
    reads only the samples it is asked for (as a dataset of image files would)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None  # opened lazily, in the process that reads
        self.length = len(np.load(folder / FILES[1], mmap_mode="r"))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if self._arrays is None:
            images, labels = (np.load(self.folder / name, mmap_mode="r") for name in FILES)
            self._arrays = images, labels
        images, labels = self._arrays
        image = torch.from_numpy(images[index].astype(np.float32) / 16.0)  # 0..16 ink levels to 0..1
        return image.unsqueeze(0), torch.tensor(int(labels[index]))  # (1, 8, 8), the digit


def write_digits(folder: Path) -> None:
    """scikit-learn's 1797 bundled digits as ``images.npy`` (uint8, 8x8) and ``labels.npy``, each written to a
    temporary file and renamed into place, so that runs starting together never read half a file."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SettingError(
            f"The digits example needs scikit-learn once, to write its files to {folder}: pip install -e '.[examples]'"
        ) from None
    digits = load_digits()
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in zip(FILES, (digits.images.astype(np.uint8), digits.target.astype(np.int64)), strict=True):
        with tempfile.NamedTemporaryFile(dir=folder, suffix=".npy", delete=False) as file:
            np.save(file, array)
        os.replace(file.name, folder / name)


class DigitsDataModule(L.LightningDataModule):
    """The digits in files, split into training and held-out samples, served by standard DataLoaders.

    Args:
        data_dir: Where the ``.npy`` files are (written there on first use).
        val_size: Samples held out for validation, test and predict; the rest train.
        batch_size: Training samples per step.
        num_workers: DataLoader worker processes (0: read in the training process).
        persistent_workers: Keep the workers from one epoch to the next (with ``num_workers`` > 0).
        split_seed: Seed of the split into training and held-out samples (the run's seed shuffles the batches).
    """

    def __init__(
        self,
        data_dir: str = "data/digits",
        val_size: PositiveInt = 297,
        batch_size: PositiveInt = 64,
        num_workers: NonNegativeInt = 2,
        persistent_workers: bool = True,
        split_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.folder = Path(data_dir).expanduser()
        self.val_size, self.batch_size, self.split_seed = val_size, batch_size, split_seed
        self.num_workers, self.persistent_workers = num_workers, persistent_workers
        self.train_set: Subset[tuple[Tensor, Tensor]] | None = None
        self.held_out: Subset[tuple[Tensor, Tensor]] | None = None

    def prepare_data(self) -> None:
        if not all((self.folder / name).is_file() for name in FILES):
            write_digits(self.folder)

    def setup(self, stage: str) -> None:
        files = DigitsFiles(self.folder)
        val_size = self.val_size
        if val_size >= len(files):
            raise SettingError(f"Expected `data.val_size` below the {len(files)} samples, got {val_size}")
        order = np.random.default_rng(self.split_seed).permutation(len(files)).tolist()
        self.held_out, self.train_set = Subset(files, order[:val_size]), Subset(files, order[val_size:])

    def _loader(self, dataset: Dataset[tuple[Tensor, Tensor]], batch_size: int, shuffle: bool) -> DataLoader:  # type: ignore[type-arg]
        workers = self.num_workers
        persistent = self.persistent_workers and workers > 0
        return DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers, persistent_workers=persistent
        )

    def train_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        assert self.train_set is not None
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        assert self.held_out is not None
        return self._loader(self.held_out, 512, shuffle=False)

    def test_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return self.val_dataloader()

    def predict_dataloader(self) -> DataLoader:  # type: ignore[type-arg]
        return self.val_dataloader()
