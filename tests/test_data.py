import struct

import numpy as np
import pytest
import torch
from PIL import Image

from hwprune.data import (
    DatasetInfo,
    dataset_info,
    get_dataset,
    list_datasets,
    make_loader,
    register_dataset,
)
from hwprune.errors import DataNotFoundError, HwpruneError, UnknownNameError


def test_list_and_info():
    names = list_datasets()
    for name in ("digits", "synthetic", "mnist", "fashionmnist", "cifar10", "cifar100", "imagefolder"):
        assert name in names
    assert dataset_info("digits") == DatasetInfo(10, 1, 8)
    assert dataset_info("cifar100") == (100, 3, 32)
    assert dataset_info("mnist") == (10, 1, 28)
    num_classes, channels, size = dataset_info("imagefolder")
    assert (num_classes, channels, size) == (None, 3, 224)


def test_digits_shapes_labels_classes():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    assert train.num_classes == 10
    assert set(train.targets.tolist()) == set(range(10)) == set(test.targets.tolist())
    assert abs(float(train.images.mean())) < 1e-4 and abs(float(train.images.std()) - 1) < 1e-4


def test_digits_split_deterministic_disjoint_stratified():
    train, test = get_dataset("digits", "train"), get_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)  # 1797 images, 80/20
    assert not set(train.indices.tolist()) & set(test.indices.tolist())
    assert len(set(train.indices.tolist()) | set(test.indices.tolist())) == 1797
    again = get_dataset("digits", "test")
    assert torch.equal(again.indices, test.indices) and torch.equal(again.images, test.images)
    counts = torch.bincount(test.targets, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified: about 36 per class


def test_digits_not_shared_with_cache():
    first = get_dataset("digits", "test")
    first.images.zero_()
    assert get_dataset("digits", "test").images.abs().sum() > 0


def test_digits_resize_and_channels():
    test = get_dataset("digits", "test", image_size=32, channels=3)
    image, _ = test[5]
    assert image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    native = get_dataset("digits", "test")[5][0]
    # Bilinear resizing preserves the mean up to border effects.
    assert abs(float(image[0].mean() - native.mean())) < 0.1
    assert get_dataset("digits", "train", image_size=28)[0][0].shape == (1, 28, 28)


def test_digits_loader_batches():
    loader = make_loader(get_dataset("digits", "train"), batch_size=100, shuffle=True, seed=1)
    x, y = next(iter(loader))
    assert x.shape == (100, 1, 8, 8) and y.shape == (100,) and y.dtype == torch.int64
    y_again = next(iter(make_loader(get_dataset("digits", "train"), 100, True, seed=1)))[1]
    y_other = next(iter(make_loader(get_dataset("digits", "train"), 100, True, seed=2)))[1]
    assert torch.equal(y, y_again) and not torch.equal(y, y_other)
    assert len(make_loader(get_dataset("digits", "test"), 100, shuffle=False)) == 4


def test_synthetic_deterministic_and_sized():
    a = get_dataset("synthetic", "train", image_size=16, channels=1, length=20, num_classes=4, seed=3)
    b = get_dataset("synthetic", "train", image_size=16, channels=1, length=20, num_classes=4, seed=3)
    assert len(a) == 20
    image, label = a[7]
    assert image.shape == (1, 16, 16) and label.dtype == torch.int64 and 0 <= int(label) < 4
    for i in (0, 7, 19, -1):
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    c = get_dataset("synthetic", "train", image_size=16, channels=1, length=20, num_classes=4, seed=4)
    assert not torch.equal(a[0][0], c[0][0])
    test = get_dataset("synthetic", "test", image_size=16, channels=1, length=20, num_classes=4, seed=3)
    assert not torch.equal(a[0][0], test[0][0])
    with pytest.raises(IndexError):
        a[20]


def test_synthetic_defaults_and_learnable_structure():
    train = get_dataset("synthetic")
    assert len(train) == 512 and train[0][0].shape == (3, 32, 32)
    # Samples sit nearer their own class prototype than any other.
    x, y = train[0]
    distances = ((train.prototypes - x) ** 2).flatten(1).sum(1)
    assert int(distances.argmin()) == int(y)


def test_missing_cifar10_dir_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as info:
        get_dataset("cifar10", "train", data_dir=missing)
    message = str(info.value)
    assert "\n" not in message
    assert str(missing / "cifar-10-batches-py") in message and "cifar10" in message
    assert isinstance(info.value, HwpruneError)


def test_no_data_dir_is_one_line_error():
    for name in ("cifar10", "cifar100", "mnist", "fashionmnist", "imagefolder"):
        with pytest.raises(DataNotFoundError) as info:
            get_dataset(name)
        assert "\n" not in str(info.value) and "--data-dir" in str(info.value)


def test_torchvision_error_reraised_as_data_not_found(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()  # present but empty: torchvision raises RuntimeError
    with pytest.raises(DataNotFoundError) as info:
        get_dataset("cifar10", "test", data_dir=tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)


def _write_idx(path, array: np.ndarray) -> None:
    magic = {1: 0x801, 3: 0x803}[array.ndim]
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_disk_with_resize_and_channels(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    test = get_dataset("mnist", "test", data_dir=tmp_path)
    assert len(test) == 4 and test.num_classes == 10
    image, label = test[3]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and label == 3
    rgb = get_dataset("mnist", "train", data_dir=tmp_path, image_size=32, channels=3)
    image = rgb[0][0]
    assert len(rgb) == 6 and image.shape == (3, 32, 32) and torch.equal(image[0], image[2])
    x, y = next(iter(make_loader(rgb, batch_size=6, shuffle=False)))
    assert x.shape == (6, 3, 32, 32) and y.dtype == torch.int64


def test_imagefolder_from_disk(tmp_path):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    train = get_dataset("imagefolder", "train", data_dir=tmp_path, image_size=32)
    assert len(train) == 4 and train.num_classes == 2 and train[0][0].shape == (3, 32, 32)
    test = get_dataset("imagefolder", "test", data_dir=tmp_path, image_size=24, channels=1)
    assert len(test) == 4 and test[3][0].shape == (1, 24, 24) and test[3][1] == 1
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataNotFoundError) as info:
        get_dataset("imagefolder", data_dir=tmp_path / "empty")
    assert str(tmp_path / "empty" / "train") in str(info.value)


def test_unknown_dataset_and_bad_arguments():
    with pytest.raises(UnknownNameError) as info:
        get_dataset("cifar11")
    assert "\n" not in str(info.value) and "cifar10" in str(info.value)
    with pytest.raises(UnknownNameError):
        dataset_info("imagenet21k")
    with pytest.raises(HwpruneError, match="split"):
        get_dataset("digits", "validation")
    with pytest.raises(HwpruneError, match="no option 'lenght'"):
        get_dataset("synthetic", lenght=5)
    with pytest.raises(HwpruneError, match="channels"):
        get_dataset("digits", channels=2)


def test_duplicate_dataset_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register_dataset("digits", num_classes=10, channels=1, native_size=8)
        def again(split, data_dir, image_size, channels):
            return None
