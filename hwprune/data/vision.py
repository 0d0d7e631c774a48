"""MNIST, Fashion-MNIST, CIFAR-10/100 and ImageFolder read from disk through torchvision.

Nothing is downloaded (``download=False`` always): benchmarks must say where their data came from,
and offline machines must fail in one clear line. When the files are absent the error names the
dataset, the exact path looked in and how to provide the data. Images become normalized float
tensors; ``image_size`` resizes and ``channels`` converts gray <-> RGB. ``augment=True`` adds the
usual training augmentation to the train split only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torchvision
from torchvision import transforms as T

from hwprune.data.registry import register_dataset
from hwprune.errors import DataNotFoundError

# Per-channel (mean, std) of the train splits, the commonly published values.
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet
}
_LUMA = (0.299, 0.587, 0.114)  # what PIL's convert("L") weights R, G, B by


def _normalize(name: str, channels: int) -> T.Normalize:
    """Return the Normalize for ``name`` converted to ``channels`` (gray stats: luma-weighted)."""
    mean, std = _STATS[name]
    if channels == len(mean):
        return T.Normalize(mean, std)
    if channels == 1:
        gray_mean = sum(w * m for w, m in zip(_LUMA, mean, strict=True))
        gray_std = sum(w * s for w, s in zip(_LUMA, std, strict=True))
        return T.Normalize((gray_mean,), (gray_std,))
    return T.Normalize(mean * channels, std * channels)


def _transform(name: str, native: tuple[int, int], size: int | None, channels: int | None, augment: bool):
    """Compose augmentation (train only), resize, channel conversion, ToTensor and Normalize."""
    native_channels, native_size = native
    channels = channels or native_channels
    size = size or native_size
    steps: list[Callable] = []
    if name == "imagefolder":
        if augment:
            steps += [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            steps += [T.Resize(round(size * 256 / 224)), T.CenterCrop(size)]
    else:
        if size != native_size:
            steps.append(T.Resize((size, size)))
        if augment:
            steps.append(T.RandomCrop(size, padding=max(1, size // 8)))
            if name.startswith("cifar"):
                steps.append(T.RandomHorizontalFlip())
    if channels != native_channels:
        steps.append(T.Grayscale(1) if channels == 1 else T.Lambda(_to_rgb))
    steps += [T.ToTensor(), _normalize(name, channels)]
    return T.Compose(steps)


def _to_rgb(image):
    return image.convert("RGB")


def _missing(
    name: str, data_dir: Path | None, looked: str, how: str, problem: str = "not found in"
) -> DataNotFoundError:
    if data_dir is None:
        return DataNotFoundError(f"{name}: no data directory given; {how} and pass --data-dir DIR")
    return DataNotFoundError(f"{name}: {problem} {data_dir / looked}; {how} or pass --data-dir")


# name -> (torchvision class, sub-directory looked in, how to provide it, (channels, native side))
_SETS = {
    "mnist": (
        torchvision.datasets.MNIST,
        "MNIST/raw",
        "place the uncompressed MNIST idx files (train-images-idx3-ubyte, ...) under DIR/MNIST/raw",
        (1, 28),
    ),
    "fashionmnist": (
        torchvision.datasets.FashionMNIST,
        "FashionMNIST/raw",
        "place the uncompressed Fashion-MNIST idx files under DIR/FashionMNIST/raw",
        (1, 28),
    ),
    "cifar10": (
        torchvision.datasets.CIFAR10,
        "cifar-10-batches-py",
        "place the torchvision CIFAR-10 python batches under DIR/cifar-10-batches-py",
        (3, 32),
    ),
    "cifar100": (
        torchvision.datasets.CIFAR100,
        "cifar-100-python",
        "place the torchvision CIFAR-100 python files under DIR/cifar-100-python",
        (3, 32),
    ),
}


def _register_torchvision_set(name: str) -> None:
    """Register torchvision dataset ``name`` of :data:`_SETS`, read from ``data_dir``."""
    cls, looked, how, native = _SETS[name]
    num_classes = 100 if name == "cifar100" else 10

    @register_dataset(name, num_classes=num_classes, channels=native[0], native_size=native[1])
    def build(split: str, data_dir: Path | None, image_size: int | None, channels: int | None, augment: bool = False):
        hint = how.replace("DIR", str(data_dir or "DIR"))
        if data_dir is None or not (data_dir / looked).exists():
            raise _missing(name, data_dir, looked, hint)
        transform = _transform(name, native, image_size, channels, augment and split == "train")
        try:
            dataset = cls(str(data_dir), train=split == "train", transform=transform, download=False)
        except RuntimeError as exc:  # torchvision's "Dataset not found or corrupted"
            raise _missing(name, data_dir, looked, hint, "missing or corrupt files in") from exc
        dataset.num_classes = len(dataset.classes)
        return dataset


for _name in _SETS:
    _register_torchvision_set(_name)


@register_dataset("imagefolder", num_classes=None, channels=3, native_size=224)
def imagefolder(split: str, data_dir: Path | None, image_size: int | None, channels: int | None, augment: bool = False):
    """Build a torchvision ImageFolder from ``data_dir/split`` (``data_dir/val`` also serves as test)."""
    root = None if data_dir is None else data_dir / split
    if root is not None and split == "test" and not root.is_dir() and (data_dir / "val").is_dir():
        root = data_dir / "val"
    how = f"put one sub-directory of images per class under {root or f'DIR/{split}'}"
    if root is None or not root.is_dir():
        raise _missing("imagefolder", data_dir, split, how)
    transform = _transform("imagefolder", (3, 224), image_size, channels, augment and split == "train")
    try:
        dataset = torchvision.datasets.ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:  # no class folders / no images
        raise _missing("imagefolder", data_dir, root.name, how, "no class folders with images in") from exc
    dataset.num_classes = len(dataset.classes)
    return dataset
