"""An in-memory image dataset and the resize/channel conversion shared by the tensor datasets."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """``(image, label)`` pairs held as tensors.

    Attributes:
        images: Float tensor ``[N, C, H, W]``.
        targets: Int64 tensor ``[N]``.
        num_classes: Number of classes of the task (not only those present).
        indices: Optional int64 tensor ``[N]``: each row's index in the source data.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        num_classes: int,
        indices: torch.Tensor | None = None,
    ) -> None:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = images
        self.targets = targets.to(torch.int64)
        self.num_classes = num_classes
        self.indices = indices

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]


def resize_and_channels(images: torch.Tensor, image_size: int | None, channels: int | None) -> torch.Tensor:
    """Resize ``[N, C, H, W]`` images (bilinear) and repeat or average them to ``channels``.

    Args:
        images: Float images.
        image_size: New square side, or None to keep the size.
        channels: 1 (channel mean), 3 (repeat a single channel), or None to keep.

    Returns:
        The converted images (a new tensor, or ``images`` itself when nothing changes).
    """
    if image_size is not None and tuple(images.shape[-2:]) != (image_size, image_size):
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if channels is not None and channels != images.shape[1]:
        if channels == 1:
            images = images.mean(dim=1, keepdim=True)
        elif images.shape[1] == 1:
            images = images.repeat(1, channels, 1, 1)
        else:
            raise ValueError(f"cannot convert {images.shape[1]} channels to {channels}")
    return images
