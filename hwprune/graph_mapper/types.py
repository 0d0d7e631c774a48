"""The records the mapper produces: which tensor axes carry which channel group.

A *site* is one axis of one parameter or buffer that carries channels (a conv's output rows, a BN's
scale, the next conv's input columns, a linear's input features after a flatten). Every position
of a site is labelled with the channel group and channel it belongs to (or with nothing, when the
position is fixed, e.g. RGB input channels). A *group* is a set of channels that must be removed
together from every site that carries them; compaction and masking work from sites, reporting
works from slices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class _TextEnum(str, Enum):
    """An enum whose members are their text everywhere: comparisons, f-strings, JSON."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Role(_TextEnum):
    """What a site's axis does with the channel."""

    PRODUCER = "producer"  # the axis that creates the channel (conv/linear out rows, their bias)
    CONSUMER = "consumer"  # the axis that reads it (next conv/linear input columns)
    PARAM = "param"  # a per-channel parameter or buffer riding along (norm scale, layer scale, pos-emb)


class SiteKind(_TextEnum):
    """How compaction slices a site's axis."""

    PLAIN = "plain"  # slice the tensor along `axis` at the kept positions
    GROUPED_IN = "grouped_in"  # input axis of a grouped conv: position i is column i % cin_g of block i // cin_g


PRODUCER, CONSUMER, PARAM = Role.PRODUCER, Role.CONSUMER, Role.PARAM
PLAIN, GROUPED_IN = SiteKind.PLAIN, SiteKind.GROUPED_IN


@dataclass(frozen=True)
class Site:
    """One channel-carrying axis of one named tensor, with the group label of each position."""

    tensor: str
    axis: int
    role: Role
    node: str  # the fx node (or ONNX node) whose handler recorded it
    roots: np.ndarray = field(repr=False, compare=False)  # component id per position, -1 when fixed
    kind: SiteKind = PLAIN
    conv_groups: int = 1  # for GROUPED_IN sites
    macs: int = 0  # multiply-adds of the op this weight belongs to (0 for norms, params)
    numel: int = 0  # elements of the whole tensor

    @property
    def length(self) -> int:
        return int(self.roots.shape[0])


@dataclass(frozen=True)
class ChannelSlice:
    """Where a group's channels live in one tensor axis.

    Channel ``k`` of the group occupies positions ``index[k*inner:(k+1)*inner]`` of ``tensor``'s
    ``axis`` (``inner`` > 1 after a flatten into a linear layer or a depthwise multiplier).
    """

    tensor: str
    axis: int
    role: Role
    index: tuple[int, ...]
    inner: int = 1
    kind: SiteKind = PLAIN
    site: int = -1

    @property
    def offset(self) -> int | None:
        """First position when the slice is one contiguous run, else None."""
        start = self.index[0]
        return start if self.index == tuple(range(start, start + len(self.index))) else None

    def explain(self) -> str:
        where = f"[{self.offset}:{self.offset + len(self.index)}]" if self.offset is not None else "[scattered]"
        rep = f" x{self.inner}" if self.inner > 1 else ""
        return f"{self.role:8s} {self.tensor} axis {self.axis} {where}{rep}"


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that must be removed together; one entry per channel, in a fixed order.

    ``blocks`` lists, for a group feeding a grouped convolution (or split into attention heads),
    the channels of each block: a mask must keep the same number in every block. ``exact`` is
    False when a weight-free op that mixes channels (LayerNorm over channels, GroupNorm) sees the
    group: removing channels then changes what the kept channels compute, so equivalence with the
    masked model cannot hold.
    """

    id: int
    name: str
    size: int
    roots: tuple[int, ...]  # the component id of each channel, as stored in Site.roots
    producers: tuple[ChannelSlice, ...]
    consumers: tuple[ChannelSlice, ...]
    params: tuple[ChannelSlice, ...]
    nodes: tuple[str, ...]
    prunable: bool
    reason: str = ""
    exact: bool = True
    inexact_reason: str = ""
    blocks: tuple[tuple[int, ...], ...] | None = None
    round_to: int = 1
    macs_per_channel: float = 0.0
    params_per_channel: float = 0.0

    @property
    def slices(self) -> tuple[ChannelSlice, ...]:
        return self.producers + self.consumers + self.params

    def explain(self) -> str:
        state = "prunable" if self.prunable else f"frozen: {self.reason}"
        if self.prunable and not self.exact:
            state += f" (inexact: {self.inexact_reason})"
        if self.blocks:
            state += f"; equal count kept in each of {len(self.blocks)} blocks"
        lines = [f"group {self.id} {self.name!r}: {self.size} channels, {state}"]
        lines += ["  " + s.explain() for s in self.slices]
        return "\n".join(lines)


@dataclass
class ChannelGraph:
    """The groups of one model (for one input shape), plus what compaction needs to rewrite it."""

    groups: list[ChannelGroup]
    sites: list[Site]
    model_name: str
    input_shape: tuple[int, ...]
    gm: object = field(repr=False)  # torch.fx.GraphModule, or the onnx.ModelProto of an ONNX-built graph
    rewrites: dict[str, object] = field(default_factory=dict, repr=False)  # node -> rewrite record
    build_s: float = 0.0
    total_macs: int = 0
    unmapped_macs: int = 0  # multiply-adds of weighted ops no handler mapped (frozen, not in total_macs)

    def group(self, gid: int) -> ChannelGroup:
        return self.groups[gid]

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def parameters(self) -> dict:
        """The model's parameters by name: the module's, or an ONNX graph's initializers less BN statistics."""
        if self.from_onnx:
            from hwprune.graph_mapper.onnx_mapper import InitializerParameters

            return dict(InitializerParameters(self.gm).named_parameters())
        return dict(self.gm.named_parameters())

    @property
    def from_onnx(self) -> bool:
        """Mapped from an ONNX file (``gm`` is its normalised ``onnx.ModelProto``), not from a PyTorch module."""
        return type(self.gm).__name__ == "ModelProto"

    def fingerprint(self) -> str:
        """A hash of the group structure: a mask made on another structure is refused."""
        spec = [(g.id, g.size, [(s.tensor, s.axis) for s in g.slices]) for g in self.groups]
        return hashlib.sha1(json.dumps(spec).encode()).hexdigest()[:16]

    def prunable_macs_share(self, total_macs: float | None = None) -> float:
        """Share of conv/linear multiply-adds in ops that lose channels when pruned by default.

        Only exact prunable groups count (inexact ones are pruned only on request). The denominator
        defaults to every weighted op the mapper saw, mapped or not (``unmapped_macs``); pass a
        counter's total (e.g. fvcore's conv+linear+matmul) to include ops hidden inside frozen modules.
        """
        prunable_roots = {r for g in self.groups if g.prunable and g.exact and g.size > 1 for r in g.roots}
        seen: dict[str, tuple[int, bool]] = {}
        for site in self.sites:
            if site.macs <= 0:
                continue
            hit = bool(prunable_roots.intersection(np.unique(site.roots).tolist()))
            macs, before = seen.get(site.tensor, (site.macs, False))
            seen[site.tensor] = (macs, before or hit)
        total = total_macs or sum(m for m, _ in seen.values()) + self.unmapped_macs
        return sum(m for m, hit in seen.values() if hit) / total if total else 0.0

    def summary(self) -> str:
        n_prunable = len(self.prunable_groups)
        return (
            f"{self.model_name}: {len(self.groups)} channel groups, {n_prunable} prunable, "
            f"{self.prunable_macs_share():.0%} of conv/linear MACs prunable, built in {self.build_s:.2f}s"
        )

    def explain(self) -> str:
        return "\n".join([self.summary()] + [g.explain() for g in self.groups])
