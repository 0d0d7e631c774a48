"""Building torchvision classification models without weights, at any class/channel count.

torchvision models are always built with ``weights=None`` (nothing is downloaded). A few models
need their image size at construction (ViT's position embedding, MaxViT's partitions); those get
``input_size`` passed through. Models with training-only auxiliary heads (GoogLeNet, Inception v3)
are built without them so every model returns a plain logits tensor in both train and eval mode.
"""

from __future__ import annotations

import functools
import re

import torchvision.models as tvm
from torch import nn

from hwprune.errors import HwpruneError

# Native input sides that are not 224. Inception v3 was designed for 299x299 (its weights' meta
# says so too); torchvision ViTs default to 224 (vit_h_14's SWAG weights are 518 but the builder's
# default image_size is 224, and we never load weights).
_NATIVE_SIZE = {"inception_v3": 299}

# Smallest square side at which ``get_model(name, input_size=s)`` runs a forward pass (eval mode,
# batch 1), found by trying s in 16, 32, 64, 96, 224 on torchvision 0.24 (plus 75, the documented
# minimum of Inception v3). First matching pattern wins; names matching none (models added in later
# torchvision releases) get their native size, which always works.
_MIN_SIZE = [
    (r"alexnet$", 64),  # adaptive pool after 3 max-pools; 32 px collapses to zero before the last
    (r"inception_v3$", 75),  # valid (unpadded) convs and pools in the stem
    (r"maxvit_t$", 224),  # every stage's map must be divisible by the 7x7 partition
    (r"vit_[bl]_16$", 16),  # built with image_size=s: one 16x16 patch
    (r"vit_[bl]_32$", 32),
    (r"vit_h_14$", 14),
    (r"(convnext|densenet|squeezenet|vgg)", 32),  # stride-4 stems / valid convs / 5 max-pools
    (r"(efficientnet|googlenet|mnasnet|mobilenet|regnet|resnet|resnext|shufflenet|swin|wide_resnet)", 16),
]


@functools.cache
def classification_names() -> tuple[str, ...]:
    """Return the torchvision classification model names (not detection/segmentation/video)."""
    return tuple(tvm.list_models(module=tvm))


def native_size(name: str) -> int:
    """Return the square input side the torchvision model ``name`` is designed for."""
    return _NATIVE_SIZE.get(name, 224)


def min_size(name: str) -> int:
    """Return the smallest square input side the torchvision model ``name`` accepts."""
    for pattern, size in _MIN_SIZE:
        if re.match(pattern, name):
            return size
    return native_size(name)


def build(name: str, num_classes: int, in_channels: int, input_size: int | None) -> nn.Module:
    """Build torchvision model ``name`` with random weights.

    Args:
        name: A name from :func:`classification_names`.
        num_classes: Width of the classifier output.
        in_channels: Input channels; the first convolution is replaced when this is not 3.
        input_size: Image side, passed to the builders that fix it at construction (ViT, MaxViT).

    Returns:
        The model (in train mode, as torchvision builds it).
    """
    kwargs: dict[str, object] = {"num_classes": num_classes}
    if name.startswith("vit_") and input_size is not None:
        kwargs["image_size"] = input_size
    if name.startswith("maxvit") and input_size is not None:
        kwargs["input_size"] = (input_size, input_size)
    if name in ("googlenet", "inception_v3"):
        # No aux heads (training-only, return namedtuples); explicit init silences a FutureWarning.
        kwargs.update(aux_logits=False, init_weights=True)
    model = tvm.get_model(name, weights=None, **kwargs)
    if in_channels != 3:
        replace_first_conv(model, in_channels)
    return model


def replace_first_conv(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first ``nn.Conv2d`` of ``model`` (module order) by an equal one taking ``in_channels``.

    Args:
        model: Model to change in place.
        in_channels: New number of input channels.

    Returns:
        The new convolution.

    Raises:
        HwpruneError: If the model has no Conv2d or its first one is grouped.
    """
    found = next(((q, m) for q, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if found is None:
        raise HwpruneError(f"cannot change input channels: {type(model).__name__} has no Conv2d")
    qualname, conv = found
    if conv.groups != 1:
        raise HwpruneError(f"cannot change input channels: first conv {qualname!r} is grouped")
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    parent_name, _, attr = qualname.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, new)
    return new
