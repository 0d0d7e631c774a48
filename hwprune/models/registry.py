"""The built-in model registry: models hwprune ships and tests itself, with their default shapes.

Seed models are registered by decorating a builder ``(num_classes, in_channels, input_size) ->
nn.Module`` with :func:`register_model`. The registry also records each model's defaults
(:class:`ModelSpec`) and the smallest square input it accepts, so tests can run fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from hwprune.registry import Registry

Builder = Callable[[int, int, int], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A model's name, where it comes from and the input/output it is built for by default.

    Attributes:
        name: The name given to :func:`hwprune.models.get_model`.
        source: ``"hwprune"``, ``"torchvision"`` or ``"timm"``.
        default_input_size: Side of the square image the model is built for.
        in_channels: Channels of the input image.
        num_classes: Width of the output logits.
    """

    name: str
    source: str
    default_input_size: int
    in_channels: int
    num_classes: int


@dataclass(frozen=True)
class BuiltinModel:
    """A registered built-in builder, its default spec and smallest accepted input side."""

    builder: Builder
    spec: ModelSpec
    min_input_size: int


BUILTIN_MODELS: Registry[BuiltinModel] = Registry("model")


def register_model(
    name: str,
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    input_size: int = 32,
    min_input_size: int | None = None,
) -> Callable[[Builder], Builder]:
    """Register a built-in model builder under ``name`` (a second registration of a name is an error).

    Args:
        name: Registry name.
        num_classes: Default number of classes.
        in_channels: Default input channels.
        input_size: Default (native) square input side.
        min_input_size: Smallest square input side the model accepts when built for it; defaults
            to ``input_size``.

    Returns:
        A decorator that registers the builder and returns it unchanged.

    Raises:
        ValueError: If ``name`` is already registered.
    """
    spec = ModelSpec(name, "hwprune", input_size, in_channels, num_classes)

    def decorate(builder: Builder) -> Builder:
        BUILTIN_MODELS.add(name, BuiltinModel(builder, spec, min_input_size or input_size))
        return builder

    return decorate
