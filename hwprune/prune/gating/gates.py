"""Hard channel gates on the groups of a ChannelGraph, applied to the weights that carry each channel.

A gate multiplies every parameter position of its channel (producer rows, per-channel parameters,
consumer columns: the sites the graph records), so a closed gate is exactly the masked model of
:mod:`hwprune.export.compact` on any architecture the mapper reads (concat, depthwise, grouped conv,
flatten into a linear, attention heads), where GATOR's activation hooks needed a hand-written mapper
per network. Because gates act on weights, one noise draw serves a whole (sub-)batch; GATOR draws
one per sample.

The gradient reaches a gate where its channel is read (consumer columns), as GATOR's gate on the
activation before the next layer; elsewhere the same 0/1 value is applied without a gradient. A
group that no weight reads (attention queries and keys meet in a matmul) takes it where it is made.

Gates: ``sigmoid((logit + logistic noise) / temperature)`` thresholded at 0.5, with a
straight-through gradient; in eval mode a gate is open exactly when it is active. A gate whose
logit falls below 0 (pass probability 0.5) is closed for good (GATOR's masked gating), except the
last open one of a group, which stays so that no group vanishes. No training draw shuts a whole
group either: when every active gate of a group is drawn shut, the one drawn nearest to open stays
open (one draw serves the batch, and a batch without the group starves the BatchNorms after it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from hwprune.errors import HwpruneError
from hwprune.graph_mapper.types import CONSUMER, GROUPED_IN, PRODUCER, ChannelGraph, ChannelGroup
from hwprune.prune.channel import unit_of


@dataclass(frozen=True)
class GateLayout:
    """Which groups carry gates and which gate (slot) each of their channels answers to.

    A group split into blocks (grouped-conv outputs, attention heads) must keep the same number of
    channels in every block, so channel ``j`` of every block shares slot ``j``: a slot then stands for
    ``len(blocks)`` channels. With ``round_to`` k > 1 (hardware alignment, an hwprune addition to
    GATOR) a slot stands for k consecutive channels (per block: the step of
    :func:`~hwprune.prune.channel.unit_of`), so kept counts stay multiples of k.
    """

    groups: tuple[ChannelGroup, ...]
    offsets: tuple[int, ...]  # first slot of each gated group
    slots: tuple[np.ndarray, ...]  # per gated group: the slot (relative to its offset) of each channel
    skipped: tuple[tuple[ChannelGroup, str], ...]  # prunable groups without gates, with the reason

    @property
    def size(self) -> int:
        return self.offsets[-1] + self.slot_counts[-1] if self.groups else 0

    @property
    def slot_counts(self) -> tuple[int, ...]:
        return tuple(int(s.max()) + 1 for s in self.slots)

    @property
    def channels_per_slot(self) -> tuple[int, ...]:
        return tuple(g.size // n for g, n in zip(self.groups, self.slot_counts, strict=True))

    def group_of_slot(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.groups)), self.slot_counts)


def _slots(group: ChannelGroup, round_to: int) -> np.ndarray | str:
    """Slot of each channel (shared across blocks), or why the group cannot be gated."""
    blocks = group.blocks or (tuple(range(group.size)),)
    if len({len(b) for b in blocks}) != 1:
        return f"its {len(blocks)} blocks differ in size"
    unit = unit_of(group, round_to)
    if unit >= group.size:
        return f"it cannot shrink by a whole step of {unit} channels and keep one (it stays whole)"
    step = unit // len(blocks)  # channels per block that one gate stands for
    if len(blocks[0]) % step:
        return f"its blocks of {len(blocks[0])} channels are no whole number of {step}-channel steps"
    slots = np.empty(group.size, dtype=np.int64)
    for block in blocks:
        slots[list(block)] = np.arange(len(block)) // step
    return slots


def gate_layout(graph: ChannelGraph, round_to: int = 1) -> GateLayout:
    """Gates on every prunable group that compacts exactly and can lose a whole step of channels."""
    groups, slots, offsets, skipped = [], [], [], []
    offset = 0
    for group in graph.prunable_groups:
        why = None
        if not group.exact:
            why = f"inexact ({group.inexact_reason}): its compacted model would not equal the gated one"
        layout = None if why else _slots(group, round_to)
        if isinstance(layout, str):
            why = layout
        if why:
            skipped.append((group, why))
            continue
        groups.append(group)
        slots.append(layout)
        offsets.append(offset)
        offset += int(layout.max()) + 1
    if not groups:
        raise HwpruneError(
            f"{graph.model_name} has no channel group that can carry gates (prunable, exact, able to lose a whole "
            f"step of {round_to} channel(s)): see `hwprune map` for why its groups are frozen"
        )
    return GateLayout(tuple(groups), tuple(offsets), tuple(slots), tuple(skipped))


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (GATOR's per-gate gradient adjustment)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


def logit(p: float) -> float:
    """Logistic quantile: the logit whose noiseless gate passes with probability ``p``."""
    return math.log(p / (1.0 - p))


class GatedModel(nn.Module):
    """``net`` with hard gates on the gated groups of ``graph`` (built from ``net``).

    Args:
        net: The model; its parameters are trained in place (gates never change them).
        graph: ``build_channel_graph(net, example)``.
        layout: ``gate_layout(graph, round_to)``: which groups carry gates.
        init_probs: Initial pass probability per gated group (``layout.groups`` order).
        temperature: Sigmoid temperature.

    Attributes:
        logits: One learnable logit per slot (all gated groups, concatenated).
        active: Per slot, False once closed for good.
        grad_scale: Per slot, the factor applied to the logit's gradient (set by the cost objective).
        last_gates: The gate values of the last forward pass (the cost term reads them).
        holding: Pruning has reached its target: gates stay as they are (set by the cost objective).
    """

    def __init__(
        self,
        net: nn.Module,
        graph: ChannelGraph,
        layout: GateLayout,
        init_probs: list[float],
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.net = net
        self.graph = graph
        self.layout = layout
        if len(init_probs) != len(self.layout.groups):
            raise HwpruneError(f"{len(init_probs)} initial probabilities for {len(self.layout.groups)} gated groups")
        counts = self.layout.slot_counts
        init = torch.cat([torch.full((n,), logit(p)) for n, p in zip(counts, init_probs, strict=True)])
        self.logits = nn.Parameter(init)
        self.temperature = temperature
        self.register_buffer("active", torch.ones(self.layout.size, dtype=torch.bool))
        self.register_buffer("grad_scale", torch.ones(self.layout.size), persistent=False)
        self.register_buffer("_group_of_slot", torch.as_tensor(self.layout.group_of_slot()), persistent=False)
        self.last_gates: torch.Tensor | None = None
        self.holding = False
        self._plan = self._weight_plan()

    # -- which weight positions each gate multiplies
    def _weight_plan(self) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
        """Per parameter name: (index buffer, view shape) of each gated site, registered as buffers.

        An index points into ``cat([gates with gradient, gates without, 1])``.
        """
        n = self.layout.size
        n_roots = 1 + max(int(s.roots.max(initial=-1)) for s in self.graph.sites)
        n_roots = max([n_roots] + [1 + max(g.roots) for g in self.layout.groups])
        slot_of_root = np.full(n_roots + 1, -1, dtype=np.int64)  # last entry: fixed positions (root -1)
        grad_role = np.full(n_roots + 1, "", dtype=object)
        for group, offset, slots in zip(self.layout.groups, self.layout.offsets, self.layout.slots, strict=True):
            roots = np.asarray(group.roots)
            slot_of_root[roots] = offset + slots
            grad_role[roots] = CONSUMER if group.consumers else PRODUCER
        params, buffers = dict(self.net.named_parameters()), dict(self.net.named_buffers())
        plan: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for k, site in enumerate(self.graph.sites):
            roots = np.where(site.roots >= 0, site.roots, n_roots)
            slot = slot_of_root[roots]
            if not (slot >= 0).any():
                continue
            weight = params.get(site.tensor)
            if weight is None:
                if site.tensor in buffers:
                    continue  # running statistics: the masked model leaves them too
                raise HwpruneError(f"graph names {site.tensor}, which the model does not have: map this model itself")
            with_grad = grad_role[roots] == site.role
            index = np.where(slot < 0, 2 * n, np.where(with_grad, slot, slot + n))
            shape = [1] * weight.ndim
            if site.kind == GROUPED_IN:  # position i: column i % cin_g of the rows of conv group i // cin_g
                cin_g, cout_g = weight.shape[1], weight.shape[0] // site.conv_groups
                rows = np.arange(weight.shape[0])[:, None] // cout_g
                index = index[rows * cin_g + np.arange(cin_g)[None, :]]
                shape[0], shape[1] = weight.shape[0], cin_g
            else:
                if index.shape[0] != weight.shape[site.axis]:
                    raise HwpruneError(f"site {site.tensor} axis {site.axis} does not match the tensor's shape")
                shape[site.axis] = index.shape[0]
            buffer = f"_gate_index_{k}"
            self.register_buffer(buffer, torch.as_tensor(index.reshape(-1)), persistent=False)
            plan.setdefault(site.tensor, []).append((buffer, tuple(shape)))
        return plan

    # -- gates
    def _noise(self) -> torch.Tensor:
        """Logistic(0, 1) noise, one value per slot."""
        u = torch.rand_like(self.logits).clamp_(1e-6, 1 - 1e-6)
        return torch.log(u) - torch.log1p(-u)

    def gates(self) -> torch.Tensor:
        """Gate value per slot: sampled hard gates with a straight-through gradient (train), else ``active``.

        While ``holding``, training gates take their eval value (no noise): the network then trains
        as the converted model will run, where a gate left near probability 0.5 would otherwise be
        shut in half of the batches and open at test time.
        """
        on = self.active.to(self.logits.dtype)
        if not self.training:
            return on
        z = _ScaleGrad.apply(self.logits, self.grad_scale)
        if self.holding:
            soft, hard = torch.sigmoid(z / self.temperature), on
        else:
            drawn = z + self._noise()
            soft = torch.sigmoid(drawn / self.temperature)
            hard = self._keep_one_per_group((soft > 0.5).to(soft.dtype) * on, drawn.detach())
        return (hard + soft - soft.detach()) * on

    def _keep_one_per_group(self, hard: torch.Tensor, drawn: torch.Tensor) -> torch.Tensor:
        """``hard`` with, in every group whose active gates were all drawn shut, the one drawn nearest to open.

        One draw serves the whole batch, so a group drawn shut is zero for every sample. Where it is
        the only path (mobilenet_v2's 32-channel stream) every sample then reaches the next layers
        alike: each BatchNorm after it normalises a batch without variance, its backward multiplies
        by up to ``1 / sqrt(eps)``, and through a chain of them the gradient overflowed (block 7's
        expand BatchNorm bias: inf, loss NaN a step later). GATOR draws per sample, so a batch never
        loses a group; nor does the converted model (a group keeps its last gate, which is thereby
        open in every draw, as in eval).
        """
        group = self._group_of_slot
        count = len(self.layout.groups)
        open_per_group = hard.new_zeros(count).index_add_(0, group, hard)
        score = drawn.masked_fill(~self.active, -math.inf)
        best = score.new_full((count,), -math.inf).scatter_reduce(0, group, score, "amax")
        keep = self.active & (open_per_group[group] == 0) & (score == best[group])
        return torch.where(keep, torch.ones_like(hard), hard)

    def gated_weights(self, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every gated parameter multiplied by its channels' gates."""
        table = torch.cat([gates, gates.detach(), gates.new_ones(1)])
        out = {}
        for name, parts in self._plan.items():
            factor = None
            for buffer, shape in parts:
                part = table[getattr(self, buffer)].view(shape)
                factor = part if factor is None else factor * part
            out[name] = self.net.get_parameter(name) * factor
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gates = self.gates()
        self.last_gates = gates
        return functional_call(self.net, self.gated_weights(gates), (x,))

    # -- state
    def slot_range(self, index: int) -> slice:
        """Slots of gated group number ``index`` (layout order)."""
        start = self.layout.offsets[index]
        return slice(start, start + self.layout.slot_counts[index])

    def open_counts(self) -> np.ndarray:
        """Channels still active per gated group."""
        active = self.active.cpu().numpy()
        return np.array(
            [active[self.slot_range(i)].sum() * c for i, c in enumerate(self.layout.channels_per_slot)], dtype=float
        )

    @torch.no_grad()
    def deactivate(self) -> int:
        """Close for good every active gate whose logit is below 0 (keeping one per group); returns how many."""
        before = int(self.active.sum())
        closing = self.active & (self.logits < 0)
        if not closing.any():
            return 0
        logits = self.logits.detach().cpu()
        active = (self.active & ~closing).cpu()
        for i in range(len(self.layout.groups)):
            part = self.slot_range(i)
            if not active[part].any():  # the group's last gate: keep its most open one
                was = self.active[part].cpu()
                best = torch.where(was, logits[part], torch.tensor(-math.inf)).argmax()
                active[part.start + int(best)] = True
        self.active.copy_(active.to(self.active.device))
        return before - int(self.active.sum())

    @torch.no_grad()
    def close(self, index: int, slots) -> None:
        """Close slots of gated group number ``index`` by hand (at least one must stay open)."""
        part = self.slot_range(index)
        active = self.active[part].clone()
        active[torch.as_tensor(slots)] = False
        if not active.any():
            raise HwpruneError(f"closing every gate of group {self.layout.groups[index].name}: keep at least one")
        self.active[part] = active
