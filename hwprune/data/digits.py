"""scikit-learn's handwritten digits: real 8x8 images that ship with scikit-learn (always offline).

1797 images of 10 classes, split 80/20 stratified with a fixed seed so every run sees the same
train and test sets. Pixels (0..16) are scaled to [0, 1], then standardized with the train split's
mean and std. Resizing (bilinear) to 28 or 32 px lets ImageNet/CIFAR-style models train on it.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from hwprune.data.registry import register_dataset
from hwprune.data.tensors import TensorImageDataset, resize_and_channels

TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.cache
def _splits() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Return ``split -> (images [N, 1, 8, 8] standardized, labels, source indices)``."""
    bunch = load_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, stratify=bunch.target, random_state=SPLIT_SEED
    )
    train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
    mean, std = images[train_idx].mean(), images[train_idx].std()
    images = (images - mean) / std
    return {
        "train": (images[train_idx], labels[train_idx], train_idx),
        "test": (images[test_idx], labels[test_idx], test_idx),
    }


@register_dataset("digits", num_classes=10, channels=1, native_size=8)
def digits(split: str, data_dir: Path | None, image_size: int | None, channels: int | None) -> TensorImageDataset:
    """Build a split of the scikit-learn digits (``data_dir`` is ignored: the data ships with sklearn)."""
    images, labels, indices = _splits()[split]
    images = resize_and_channels(images, image_size, channels)
    return TensorImageDataset(images.clone(), labels.clone(), num_classes=10, indices=indices.clone())
