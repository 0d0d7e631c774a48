"""Resolving a model name to a module: built-in registry first, then torchvision, then timm.

A name may carry a source prefix (``torchvision:vgg11``, ``timm:resnet18``, ``hwprune:vgg11``) to
skip the built-in models that shadow a torchvision name; ``hf:<family>`` names a Hugging Face model built
from a config (:mod:`hwprune.models.hf`). Nothing is ever downloaded: torchvision models are built with
``weights=None``, timm models with ``pretrained=False``, Hugging Face models from their config.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

import torch
from torch import nn

from hwprune.errors import HwpruneError, UnknownNameError
from hwprune.models import _torchvision
from hwprune.models.registry import BUILTIN_MODELS, ModelSpec

SOURCES = ("hwprune", "torchvision", "timm", "hf")


def _timm() -> Any:
    """Return the timm module, or None when it is not installed."""
    if importlib.util.find_spec("timm") is None:
        return None
    import timm

    return timm


def _resolve(name: str) -> tuple[str, str]:
    """Return ``(source, bare_name)`` for ``name`` or raise a one-line UnknownNameError."""
    source, sep, bare = name.partition(":")
    if not sep:
        source, bare = "", name
    elif source not in SOURCES:
        choices = ", ".join(SOURCES)
        raise UnknownNameError(f"unknown model source {source!r} in {name!r}; use one of {choices}")
    if source == "hf":
        from hwprune.models.hf import family

        family(bare)  # one line listing the families when unknown
        return "hf", bare
    if source in ("", "hwprune") and bare in BUILTIN_MODELS:
        return "hwprune", bare
    if source in ("", "torchvision") and bare in _torchvision.classification_names():
        return "torchvision", bare
    timm = _timm() if source in ("", "timm") else None
    if timm is not None and timm.is_model(bare):
        return "timm", bare
    known = list_models(source or "all")
    close = difflib.get_close_matches(bare, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    where = f" from {source}" if source else ""
    raise UnknownNameError(f"unknown model {name!r}{where}{hint} (see `hwprune models`)")


def list_models(source: str | None = None) -> list[str]:
    """List model names.

    Args:
        source: ``None`` or ``"hwprune"`` for the built-in models, ``"torchvision"`` for torchvision
            classification models, ``"timm"`` for timm models (empty without timm), ``"hf"`` for the
            Hugging Face families (``hf:llama``, ...), ``"all"`` for all of them (built-in first, each name once).

    Returns:
        The names, sorted within each source.

    Raises:
        HwpruneError: If ``source`` is not one of those.
    """
    if source in (None, "hwprune"):
        return BUILTIN_MODELS.names()
    if source == "torchvision":
        return sorted(_torchvision.classification_names())
    if source == "timm":
        timm = _timm()
        return sorted(timm.list_models()) if timm is not None else []
    if source == "hf":
        from hwprune.models.hf import FAMILIES

        return [f"hf:{name}" for name in FAMILIES]
    if source == "all":
        names = list_models("hwprune")
        seen = set(names)
        for src in ("torchvision", "timm", "hf"):
            names += [n for n in list_models(src) if n not in seen]
            seen.update(names)
        return names
    raise HwpruneError(f"unknown model source {source!r}; use one of hwprune, torchvision, timm, hf, all")


def model_spec(name: str) -> ModelSpec:
    """Return the defaults ``name`` is built with (source, input side, channels, classes).

    Args:
        name: Model name, optionally prefixed with its source.

    Returns:
        The model's :class:`ModelSpec`.

    Raises:
        UnknownNameError: If no source knows ``name``.
    """
    source, bare = _resolve(name)
    if source == "hwprune":
        return BUILTIN_MODELS.get(bare).spec
    if source == "torchvision":
        return ModelSpec(bare, source, _torchvision.native_size(bare), 3, 1000)
    if source == "hf":  # text: the input size is the token count; channels and classes come from the config
        from hwprune.models.hf import DEFAULT_TOKENS

        return ModelSpec(bare, source, DEFAULT_TOKENS, 0, 0)
    cfg = _timm_cfg(bare)
    return ModelSpec(bare, source, int(cfg["input_size"][-1]), 3, int(cfg["num_classes"]))


def _timm_cfg(name: str) -> dict[str, Any]:
    """Return timm's default config for ``name`` (input size and class count), with fallbacks."""
    cfg = {"input_size": (3, 224, 224), "num_classes": 1000}
    try:
        pretrained = _timm().get_pretrained_cfg(name)
        if pretrained is not None:
            cfg["input_size"] = pretrained.input_size
            cfg["num_classes"] = pretrained.num_classes or 1000
    except Exception:  # old timm versions lack the helper; the defaults are fine
        pass
    return cfg


def min_input_size(name: str) -> int:
    """Return the smallest square input side the model accepts when built for that side.

    Found by trying and hardcoded (see ``_torchvision._MIN_SIZE`` and each built-in model's
    registration); use it to keep tests fast. timm models report their native size.

    Args:
        name: Model name, optionally prefixed with its source.

    Returns:
        The side ``s`` such that ``get_model(name, input_size=s)`` runs on an ``s x s`` input.
    """
    source, bare = _resolve(name)
    if source == "hwprune":
        return BUILTIN_MODELS.get(bare).min_input_size
    if source == "torchvision":
        return _torchvision.min_size(bare)
    return model_spec(name).default_input_size


def get_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    input_size: int | None = None,
) -> nn.Module:
    """Build a model with random weights (never downloads), in the mode its builder leaves it.

    Resolution order: built-in registry, torchvision classification models, timm (when installed).
    torchvision models with ``in_channels != 3`` get their first Conv2d replaced.

    Args:
        name: Model name, optionally prefixed with its source (``torchvision:vgg11``).
        num_classes: Output width; the spec's default when None.
        in_channels: Input channels; the spec's default when None.
        input_size: Square input side the model is built for; the spec's default when None.
            Only models that fix their size at construction use it (flatten -> Linear built-in
            models, torchvision ViT/MaxViT).

    Returns:
        The model.

    Raises:
        UnknownNameError: If no source knows ``name`` (one line, with close matches).
    """
    source, bare = _resolve(name)
    spec = model_spec(name)
    num_classes = spec.num_classes if num_classes is None else num_classes
    in_channels = spec.in_channels if in_channels is None else in_channels
    if source == "hwprune":
        size = spec.default_input_size if input_size is None else input_size
        return BUILTIN_MODELS.get(bare).builder(num_classes, in_channels, size)
    if source == "torchvision":
        return _torchvision.build(bare, num_classes, in_channels, input_size)
    if source == "hf":  # sizes come from the family's config (hwprune.models.hf; --hf-config on the CLI)
        from hwprune.models.hf import hf_model

        return hf_model(bare)
    kwargs: dict[str, Any] = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    if input_size is not None:
        kwargs["img_size"] = input_size  # only some timm models accept it
        try:
            return _timm().create_model(bare, **kwargs)
        except TypeError:
            del kwargs["img_size"]
    return _timm().create_model(bare, **kwargs)


def example_input(
    name: str,
    batch: int = 1,
    input_size: int | None = None,
    in_channels: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Return a deterministic standard-normal input ``[batch, C, H, W]`` for model ``name``.

    Args:
        name: Model name (its spec supplies the defaults).
        batch: Batch size.
        input_size: Square side; the spec's default when None.
        in_channels: Channels; the spec's default when None.
        seed: Seed of the generator; equal arguments give equal tensors.

    Returns:
        A float32 CPU tensor.
    """
    spec = model_spec(name)
    side = spec.default_input_size if input_size is None else input_size
    channels = spec.in_channels if in_channels is None else in_channels
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, side, side, generator=generator)
