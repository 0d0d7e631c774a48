"""Checkpoints without pickle: the state dict as safetensors plus a JSON sidecar.

``<dir>/<name>.safetensors`` holds every tensor of ``model.state_dict()`` (moved to CPU; tied
tensors are stored as copies); ``<dir>/<name>.json`` holds the epoch, accuracies and the training
configuration. Both are written to a temporary file and renamed into place, so a reader sees the
old checkpoint or the new one, never a torn file. Loading reads tensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_bytes
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.files import write_atomically
from hwprune.models.weights import apply_state

CHECKPOINT_FORMAT = "hwprune.checkpoint/1"
SUFFIX = ".safetensors"


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """Return ``(tensors file, sidecar)`` for a checkpoint path given with or without its suffix."""
    path = Path(path)
    if path.suffix in (SUFFIX, ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + SUFFIX), path.with_name(path.name + ".json")


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict and ``meta`` atomically; returns the tensors file's path.

    Args:
        model: The model (a DDP wrapper is unwrapped, so names carry no ``module.`` prefix).
        path: Checkpoint path, with or without the ``.safetensors`` suffix.
        meta: JSON-serialisable facts for the sidecar (epoch, accuracy, config ...).
    """
    tensors_path, sidecar = checkpoint_paths(path)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap(model).state_dict().items()}
    write_atomically(tensors_path, save_bytes(state, metadata={"format": CHECKPOINT_FORMAT}))
    info = {"format": CHECKPOINT_FORMAT, "tensors": tensors_path.name, **(meta or {})}
    write_atomically(sidecar, json.dumps(info, indent=1, default=str).encode())
    return tensors_path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """Return a checkpoint's JSON sidecar ({} when it has none)."""
    sidecar = checkpoint_paths(path)[1]
    if not sidecar.exists():
        return {}
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise HwpruneError(f"cannot read checkpoint sidecar {sidecar}: {exc}") from None


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True) -> dict[str, Any]:
    """Load a checkpoint's tensors into ``model`` (on the model's device) and return its sidecar.

    Args:
        model: A model with the same structure (a DDP wrapper is unwrapped).
        path: Checkpoint path, with or without the ``.safetensors`` suffix.
        strict: Refuse missing or unexpected names (shapes must always match).

    Returns:
        The sidecar's contents ({} when there is none).

    Raises:
        HwpruneError: If the file is missing or unreadable, or names/shapes do not fit the model.
    """
    tensors_path, _ = checkpoint_paths(path)
    if not tensors_path.exists():
        raise HwpruneError(f"checkpoint {tensors_path} does not exist")
    try:
        state = load_file(str(tensors_path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise HwpruneError(f"cannot read checkpoint {tensors_path}: {exc}") from None
    apply_state(unwrap(model), state, f"checkpoint {tensors_path}", strict)
    return read_sidecar(path)
