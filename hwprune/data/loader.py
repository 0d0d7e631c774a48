"""A seeded DataLoader, so shuffling order is reproducible across runs."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """Return a DataLoader whose shuffle order depends only on ``seed``.

    Args:
        dataset: The dataset.
        batch_size: Samples per batch (the last batch may be smaller).
        shuffle: Whether to reshuffle every epoch.
        seed: Seed of the loader's generator.
        num_workers: Worker processes (0 loads in the calling process).

    Returns:
        The loader.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )
