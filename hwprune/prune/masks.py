"""What to keep: channel masks over groups, weight masks over tensors; saved, loaded, checked.

A mask is data, so it can be computed on one machine and applied on another. Each carries the
fingerprint of the structure it was made for and is checked against the graph or model it is
applied to; a mismatch is refused with one line saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwprune.errors import MaskMismatchError
from hwprune.files import write_atomically
from hwprune.graph_mapper.types import ChannelGraph

CHANNEL_FORMAT = "hwprune.channel_mask/1"
WEIGHT_FORMAT = "hwprune.weight_mask/1"


@dataclass
class ChannelMask:
    """Per channel group, which channels to keep (True = keep). Groups not listed keep everything."""

    keep: dict[int, np.ndarray]
    model: str = ""
    fingerprint: str = ""
    meta: dict = field(default_factory=dict)

    @classmethod
    def full(cls, graph: ChannelGraph) -> ChannelMask:
        return cls({}, graph.model_name, graph.fingerprint())

    def removed(self, gid: int) -> int:
        k = self.keep.get(gid)
        return 0 if k is None else int((~k).sum())

    def pruned_groups(self) -> list[int]:
        return [g for g, k in self.keep.items() if not k.all()]

    def channel_density(self, graph: ChannelGraph) -> float:
        """Kept / total channels over the prunable groups."""
        total = sum(g.size for g in graph.prunable_groups)
        kept = sum(g.size - self.removed(g.id) for g in graph.prunable_groups)
        return kept / total if total else 1.0

    def validate(self, graph: ChannelGraph) -> None:
        """Refuse a mask that does not fit ``graph``: wrong model, unknown group, broken constraint."""
        if self.fingerprint and self.fingerprint != graph.fingerprint():
            raise MaskMismatchError(
                f"mask was made for {self.model or 'another model'} (structure {self.fingerprint}), not "
                f"{graph.model_name} (structure {graph.fingerprint()}) at input {graph.input_shape}: "
                "compute the mask for this model and input shape"
            )
        for gid, keep in self.keep.items():
            if not 0 <= gid < len(graph.groups):
                raise MaskMismatchError(
                    f"mask names group {gid}, but {graph.model_name} has groups "
                    f"0..{len(graph.groups) - 1}: the mask was made for another model"
                )
            group = graph.groups[gid]
            if keep.shape != (group.size,):
                raise MaskMismatchError(
                    f"mask for group {gid} ({group.name}) has {keep.size} entries, the group has {group.size} channels"
                )
            if keep.all():
                continue
            if not keep.any():
                raise MaskMismatchError(f"mask keeps no channel of group {gid} ({group.name}): keep at least one")
            if not group.prunable:
                raise MaskMismatchError(f"mask removes channels of frozen group {gid} ({group.name}): {group.reason}")
            if group.blocks:
                counts = {int(keep[list(b)].sum()) for b in group.blocks}
                if len(counts) != 1:
                    raise MaskMismatchError(
                        f"group {gid} ({group.name}) is split into blocks (conv groups or attention heads): keep "
                        f"the same number of channels in each of its {len(group.blocks)} blocks "
                        f"(kept counts {sorted(counts)})"
                    )

    def to_json(self) -> dict:
        return {
            "format": CHANNEL_FORMAT,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "meta": self.meta,
            "groups": {
                str(g): {"size": int(k.size), "keep": np.flatnonzero(k).tolist()} for g, k in sorted(self.keep.items())
            },
        }

    def save(self, path: str | Path) -> None:
        write_atomically(path, json.dumps(self.to_json(), indent=1).encode())

    @classmethod
    def load(cls, path: str | Path) -> ChannelMask:
        """Read a mask file, checked against its schema (``hwprune.checks.channel_mask_document``)."""
        from hwprune.checks import channel_mask_document, read_format_json  # checks imports masks

        data = read_format_json(path, CHANNEL_FORMAT)
        keep = {}
        for gid, (size, kept) in channel_mask_document(data, path).items():
            k = np.zeros(size, dtype=bool)
            k[np.asarray(kept, dtype=np.int64)] = True
            keep[gid] = k
        return cls(keep, data.get("model", ""), data.get("fingerprint", ""), data.get("meta", {}))


@dataclass
class WeightMask:
    """Per named tensor, which weights to keep (unstructured)."""

    keep: dict[str, np.ndarray]
    model: str = ""
    meta: dict = field(default_factory=dict)

    def density(self) -> float:
        total = sum(k.size for k in self.keep.values())
        return sum(int(k.sum()) for k in self.keep.values()) / total if total else 1.0

    def shuffled(self, seed: int) -> WeightMask:
        """The same number of kept weights per tensor at random positions (Frankle et al. 2021's layerwise shuffle).

        The control that tells a method's choice of *which* weights apart from its per-layer densities:
        when the shuffled mask trains as well, only the densities mattered.
        """
        rng = np.random.default_rng(seed)
        keep = {n: rng.permutation(k.reshape(-1)).reshape(k.shape) for n, k in self.keep.items()}
        return WeightMask(keep, self.model, {**self.meta, "shuffled_seed": seed})

    def validate(self, named_shapes: dict[str, tuple[int, ...]]) -> None:
        for name, keep in self.keep.items():
            if name not in named_shapes:
                raise MaskMismatchError(
                    f"weight mask names {name!r}, which the model does not have: the mask was made for another model"
                )
            if tuple(keep.shape) != tuple(named_shapes[name]):
                raise MaskMismatchError(
                    f"weight mask for {name} has shape {tuple(keep.shape)}, the tensor has {tuple(named_shapes[name])}"
                )

    def apply(self, model):
        """Zero the removed weights of ``model`` in place (checked first); returns the model."""
        import torch

        tensors = dict(model.named_parameters())
        self.validate({n: tuple(t.shape) for n, t in tensors.items()})
        with torch.no_grad():
            for name, keep in self.keep.items():
                t = tensors[name]
                t.mul_(torch.as_tensor(keep, dtype=t.dtype, device=t.device))
        return model

    def save(self, path: str | Path) -> None:
        data = {
            "format": WEIGHT_FORMAT,
            "model": self.model,
            "meta": self.meta,
            "tensors": {
                n: {"shape": list(k.shape), "bits": np.packbits(k.reshape(-1)).tobytes().hex()}
                for n, k in self.keep.items()
            },
        }
        write_atomically(path, json.dumps(data).encode())

    @classmethod
    def load(cls, path: str | Path) -> WeightMask:
        """Read a weight-mask file, checked against its schema (``hwprune.checks.weight_mask_document``)."""
        from hwprune.checks import read_format_json, weight_mask_document  # checks imports masks

        data = read_format_json(path, WEIGHT_FORMAT, "weight mask file")
        weight_mask_document(data, path)
        keep = {}
        for name, entry in data["tensors"].items():
            shape = tuple(entry["shape"])
            bits = np.unpackbits(np.frombuffer(bytes.fromhex(entry["bits"]), dtype=np.uint8))
            keep[name] = bits[: int(np.prod(shape))].astype(bool).reshape(shape)
        return cls(keep, data.get("model", ""), data.get("meta", {}))
