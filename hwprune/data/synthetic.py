"""Deterministic random images for smoke tests and latency runs (no files needed).

Each class has a fixed random prototype image; a sample is its class prototype plus Gaussian
noise, so the task is learnable (a training loop can be checked to reduce the loss) yet needs no
data on disk. Samples are generated on access from (seed, split, index), so a large ``length``
costs no memory, and equal arguments always give equal samples.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from hwprune.data.registry import register_dataset


class SyntheticImages(Dataset):
    """``length`` samples of ``[channels, size, size]`` images with labels in ``[0, num_classes)``."""

    def __init__(
        self, length: int, num_classes: int, channels: int, size: int, seed: int, noise: float, split: str
    ) -> None:
        if length < 1 or num_classes < 1:
            raise ValueError("length and num_classes must be positive")
        self.num_classes = num_classes
        self.noise = noise
        self.shape = (channels, size, size)
        self._base = (seed * 2 + (split == "test")) * 1_000_003
        gen = torch.Generator().manual_seed(seed)
        self.prototypes = torch.randn(num_classes, *self.shape, generator=gen)
        gen = torch.Generator().manual_seed(self._base)
        self.targets = torch.randint(num_classes, (length,), generator=gen, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        label = self.targets[index]
        gen = torch.Generator().manual_seed(self._base + 1 + index)
        image = self.prototypes[label] + self.noise * torch.randn(self.shape, generator=gen)
        return image, label


@register_dataset("synthetic", num_classes=10, channels=3, native_size=32)
def synthetic(
    split: str,
    data_dir: Path | None,
    image_size: int | None,
    channels: int | None,
    num_classes: int = 10,
    length: int | None = None,
    seed: int = 0,
    noise: float = 1.0,
) -> SyntheticImages:
    """Build random images (``length`` defaults to 512 for train, 128 for test; ``data_dir`` is ignored)."""
    if length is None:
        length = 512 if split == "train" else 128
    return SyntheticImages(length, num_classes, channels or 3, image_size or 32, seed, noise, split)
