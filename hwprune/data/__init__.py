"""Datasets by name, never downloaded: digits, synthetic and text offline, torchvision sets from disk.

Public API: :func:`get_dataset`, :func:`list_datasets`, :func:`dataset_info`, :func:`dataset_kind`,
:func:`make_loader`, :func:`register_dataset`, :class:`DatasetInfo` and :class:`TensorImageDataset`.
"""

from hwprune.data import digits, synthetic, text, vision  # noqa: F401  (register the datasets)
from hwprune.data.loader import make_loader, split_loader
from hwprune.data.registry import (
    DatasetInfo,
    dataset_info,
    dataset_kind,
    get_dataset,
    list_datasets,
    register_dataset,
)
from hwprune.data.tensors import TensorImageDataset

__all__ = [
    "DatasetInfo",
    "TensorImageDataset",
    "dataset_info",
    "dataset_kind",
    "get_dataset",
    "list_datasets",
    "make_loader",
    "split_loader",
    "register_dataset",
]
