"""The dataset registry: a name -> builder map plus each dataset's class/channel/size facts.

A builder is called as ``builder(split, data_dir, image_size, channels, **opts)`` and returns a
``torch.utils.data.Dataset`` of ``(image, label)`` pairs with float images ``[C, H, W]`` and int64
labels. Options a builder does not take are rejected in one line before it is called.

A dataset of kind ``"text"`` holds token ids for a language model instead: ``(ids, ids)`` pairs, the same
int64 tensor ``[tokens]`` twice (the loss shifts it for next-token prediction); its builder takes the
sequence length and the model's vocabulary size as options, and ``image_size``/``channels`` stay None.
The kind lets a command refuse an image dataset for a language model, and the reverse, in one line.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from torch.utils.data import Dataset

from hwprune.errors import HwpruneError
from hwprune.registry import Registry

SPLITS = ("train", "test")
KINDS = ("image", "text")


class DatasetInfo(NamedTuple):
    """What a dataset holds natively (``num_classes`` is None when it depends on the files)."""

    num_classes: int | None
    channels: int
    native_size: int


@dataclass(frozen=True)
class DatasetEntry:
    """A registered builder, its :class:`DatasetInfo` and what its items are (``kind``, one of :data:`KINDS`)."""

    builder: Callable[..., Dataset]
    info: DatasetInfo
    kind: str = "image"


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(
    name: str, num_classes: int | None, channels: int, native_size: int, kind: str = "image"
) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Register a dataset builder under ``name`` (a second registration of a name is an error).

    Args:
        name: Registry name.
        num_classes: Number of classes, or None when it depends on the data on disk (or, for text, on the model).
        channels: Native image channels (1 for text).
        native_size: Native square image side, or the default sequence length of a text dataset.
        kind: ``"image"`` (``(image, label)`` items) or ``"text"`` (``(ids, ids)`` items).

    Returns:
        A decorator that registers the builder and returns it unchanged.
    """
    if kind not in KINDS:
        raise ValueError(f"dataset kind must be one of {KINDS}, got {kind!r}")

    def decorate(builder: Callable[..., Dataset]) -> Callable[..., Dataset]:
        DATASETS.add(name, DatasetEntry(builder, DatasetInfo(num_classes, channels, native_size), kind))
        return builder

    return decorate


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted."""
    return DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """Return ``(num_classes, channels, native_size)`` of dataset ``name``.

    Raises:
        UnknownNameError: If ``name`` is not registered.
    """
    return DATASETS.get(name).info


def dataset_kind(name: str) -> str:
    """Return ``"image"`` or ``"text"``: what the items of dataset ``name`` are.

    Raises:
        UnknownNameError: If ``name`` is not registered.
    """
    return DATASETS.get(name).kind


def describe_dataset(name: str) -> str:
    """One line on dataset ``name`` for `hwprune datasets`: its facts, and for text the builder's summary."""
    entry = DATASETS.get(name)
    info = entry.info
    if entry.kind == "text":
        doc = (entry.builder.__doc__ or "").strip()
        summary = doc.splitlines()[0].rstrip(".") if doc else "token ids"
        return f"text for language models, {info.native_size} tokens unless --input-size: {summary}"
    return f"classes={info.num_classes} channels={info.channels} size={info.native_size}"


def get_dataset(
    name: str,
    split: str = "train",
    data_dir: str | Path | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    **opts: object,
) -> Dataset:
    """Build split ``split`` of dataset ``name``; nothing is ever downloaded.

    Args:
        name: A name from :func:`list_datasets`.
        split: ``"train"`` or ``"test"``.
        data_dir: Directory holding the files (datasets read from disk only).
        image_size: Square side to resize images to; native size when None.
        channels: Image channels (1 or 3); native channels when None.
        **opts: Dataset-specific options (for example ``length`` and ``seed`` for synthetic).

    Returns:
        A dataset of ``(float image [C, H, W], int64 label)`` pairs, or of ``(int64 ids [tokens], the same ids)``
        for a text dataset (:func:`dataset_kind`).

    Raises:
        UnknownNameError: If ``name`` is not registered.
        DataNotFoundError: If the dataset's files are not under ``data_dir``.
        HwpruneError: For a bad split, size, channel count or option.
    """
    entry = DATASETS.get(name)
    if split not in SPLITS:
        raise HwpruneError(f"unknown split {split!r} for dataset {name!r}; use train or test")
    if image_size is not None and image_size < 1:
        raise HwpruneError(f"image_size must be positive, got {image_size}")
    if channels is not None and channels not in (1, 3):
        raise HwpruneError(f"channels must be 1 or 3, got {channels}")
    params = inspect.signature(entry.builder).parameters
    allowed = [p for p in params if p not in ("split", "data_dir", "image_size", "channels")]
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise HwpruneError(f"dataset {name!r} has no option {unknown[0]!r} (options: {', '.join(allowed) or 'none'})")
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    return entry.builder(split=split, data_dir=data_dir, image_size=image_size, channels=channels, **opts)
