"""A user's weights into a model: safetensors, a weights-only state dict or checkpoint, or a torchvision name.

Nothing is downloaded and nothing arbitrary is unpickled: ``torch.load(weights_only=True)`` refuses
pickled objects, and torchvision weight names (``DEFAULT``, ``IMAGENET1K_V2``) are read from the local
torch hub cache only. A name or shape that does not fit the model is one line naming the first one.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError

CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "net")  # where training scripts nest the weights


def apply_state(model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """Load ``state`` into ``model`` after checking names and shapes (one line naming the first misfit).

    Shapes must always match; ``strict`` also refuses missing or unexpected names.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if strict and (missing or unexpected):
        what = f"lacks {missing[0]!r}" if missing else f"has {unexpected[0]!r}, which the model does not"
        raise HwpruneError(
            f"{source} does not fit the model: it {what} ({len(missing)} missing, {len(unexpected)} "
            "unexpected names); were they saved from this architecture and number of classes?"
        )
    for name, t in state.items():
        if name in own and tuple(own[name].shape) != tuple(t.shape):
            raise HwpruneError(
                f"{source}: {name} has shape {tuple(t.shape)}, the model's is {tuple(own[name].shape)} "
                "(another number of classes or channels? see --num-classes / --in-channels)"
            )
    with torch.no_grad():
        model.load_state_dict(state, strict=strict)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors, or a weights-only torch file (a state dict or checkpoint)."""
    if not path.is_file():
        raise HwpruneError(f"weights file {path} not found (a path to .safetensors/.pt/.pth, or a torchvision name)")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise HwpruneError(f"cannot read safetensors file {path}: {str(exc).splitlines()[0]}") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise HwpruneError(
            f"{path} is not a weights-only file (it holds pickled Python objects, which are never loaded): "
            "save model.state_dict() with torch.save, or use safetensors"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise HwpruneError(f"cannot read weights {path}: {str(exc).splitlines()[0]}") from None
    for key in CHECKPOINT_KEYS:
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
            break
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise HwpruneError(f"{path} holds no state dict (a mapping of names to tensors, e.g. model.state_dict())")
    if all(k.startswith("module.") for k in data):  # saved from a DistributedDataParallel wrapper
        data = {k[len("module.") :]: v for k, v in data.items()}
    return data


def torchvision_weights_file(model_name: str, weights: str) -> Path:
    """The local torch hub cache file of a torchvision weight enum (``DEFAULT``, ``IMAGENET1K_V1``, ...)."""
    from torchvision.models import get_model_weights

    try:
        enum = get_model_weights(model_name.split(":")[-1])
    except (ValueError, KeyError):
        raise HwpruneError(f"{model_name!r} has no torchvision weights: give --weights a file path") from None
    try:
        chosen = enum[weights] if weights != "DEFAULT" else enum.DEFAULT
    except KeyError:
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise HwpruneError(f"{model_name} has no weights {weights!r}; torchvision offers {names}") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(chosen.url).name
    if not cached.is_file():
        raise HwpruneError(
            f"{model_name} weights {chosen.name} are not in the local torch hub cache ({cached}); hwprune never "
            f"downloads: fetch {chosen.url} on a connected machine and place the file there"
        )
    return cached


def load_weights(model: nn.Module, weights: str | Path, model_name: str = "") -> Path:
    """Load ``weights`` (a file, or a torchvision weight name for ``model_name``) into ``model``; returns the file."""
    path = Path(weights)
    if not path.suffix and not path.exists() and str(weights).replace("_", "").isalnum() and str(weights).isupper():
        path = torchvision_weights_file(model_name, str(weights))
    apply_state(model, read_state(path), f"weights file {path}")
    return path
