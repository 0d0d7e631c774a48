"""A seeded DataLoader, so shuffling order is reproducible across runs."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from hwprune.errors import HwpruneError


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
    vocab_size: int | None = None,
) -> DataLoader:
    """A loader over ``split`` of dataset ``name``, shaped like the model's example input.

    Images are resized to the example's side and channels; a text dataset is cut into sequences of the
    example's token count, its ids below ``vocab_size`` (the model's vocabulary). A float example (images)
    with a text dataset, or integer token ids with an image dataset, is refused in one line.
    """
    from hwprune.data.registry import dataset_kind, get_dataset

    takes_tokens = not example.is_floating_point()
    if dataset_kind(name) == "text":
        if not takes_tokens:
            raise HwpruneError(
                f"dataset {name!r} is token ids for a language model, but this model takes "
                f"{list(example.shape)} float input: use an image dataset (digits works offline)"
            )
        dataset = get_dataset(name, split, data_dir=data_dir, tokens=int(example.shape[-1]), vocab_size=vocab_size)
    else:
        if takes_tokens:
            raise HwpruneError(
                f"dataset {name!r} holds images, but this model takes token ids: use --data text (offline)"
            )
        size, channels = int(example.shape[-1]), int(example.shape[1])
        dataset = get_dataset(name, split, data_dir=data_dir, image_size=size, channels=channels)
    return make_loader(dataset, batch_size=batch_size, shuffle=shuffle, seed=seed)
