"""A seeded DataLoader, so shuffling order is reproducible across runs."""

from __future__ import annotations

from pathlib import Path

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


def split_loader(
    name: str,
    split: str,
    example: torch.Tensor,
    batch_size: int,
    shuffle: bool = False,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> DataLoader:
    """A loader over ``split`` of dataset ``name``, resized to the example input's side and channels."""
    from hwprune.data.registry import get_dataset

    size, channels = int(example.shape[-1]), int(example.shape[1])
    dataset = get_dataset(name, split, data_dir=data_dir, image_size=size, channels=channels)
    return make_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed)
