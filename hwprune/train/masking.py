"""Keeping pruned weights at exactly zero while training.

SGD's momentum buffer and weight decay would revive a pruned weight after a single step, so the
:class:`MaskEnforcer` zeroes the masked gradients after every backward pass *and* re-applies the
mask to the weights after every optimizer step. A channel mask is turned into the weight mask of
its masked model (the oracle in :mod:`hwprune.export.compact`): producer rows, per-channel
parameters and consumer columns of the removed channels.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.prune.masks import CHANNEL_FORMAT, WEIGHT_FORMAT, ChannelMask, WeightMask


def load_mask(path: str | Path) -> WeightMask | ChannelMask:
    """Load a weight or channel mask file, whichever ``path`` holds (by its ``format`` field)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(256).decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise HwpruneError(f"mask file {path} does not exist") from None
    except OSError as exc:
        raise HwpruneError(f"cannot read mask file {path}: {exc.strerror or exc}") from None
    if f'"{CHANNEL_FORMAT}"' in head:
        return ChannelMask.load(path)
    if f'"{WEIGHT_FORMAT}"' in head:
        return WeightMask.load(path)
    try:  # the format field may come later in a hand-written file
        fmt = json.loads(Path(path).read_text()).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt == CHANNEL_FORMAT:
        return ChannelMask.load(path)
    if fmt == WEIGHT_FORMAT:
        return WeightMask.load(path)
    raise HwpruneError(f"{path} is neither a {WEIGHT_FORMAT} nor a {CHANNEL_FORMAT} file")


def channel_to_weight_mask(model: nn.Module, graph, mask: ChannelMask) -> WeightMask:
    """Return the weight mask that zeroes what ``mask`` removes from ``model``.

    Args:
        model: The model ``graph`` was built from.
        graph: Its :class:`~hwprune.graph_mapper.ChannelGraph`.
        mask: The channel mask (validated against ``graph``).

    Returns:
        A WeightMask over every parameter that loses entries (producer rows, biases, norm
        parameters, consumer columns); parameters left whole are not listed.
    """
    from hwprune.export.compact import masked_model

    probe = copy.deepcopy(model).cpu()
    with torch.no_grad():
        for p in probe.parameters():
            p.fill_(1.0)
    masked = masked_model(probe, graph, mask)
    keep = {}
    for name, p in masked.named_parameters():
        k = (p.detach() != 0).numpy()
        if not k.all():
            keep[name] = k
    return WeightMask(keep, model=mask.model, meta={"from": "channel_mask", **mask.meta})


class MaskEnforcer:
    """Holds ``{parameter: keep}`` on the parameters' device and applies it to grads and weights.

    Args:
        model: The (unwrapped) model being trained; masks refer to its parameter names.
        weight_mask: A weight mask, or None.
        channel_mask: A channel mask, or None (needs ``graph`` or ``example_input``).
        graph: The ChannelGraph ``channel_mask`` was made for.
        example_input: An input batch to map the model with when ``graph`` is not given.
    """

    def __init__(
        self,
        model: nn.Module,
        weight_mask: WeightMask | None = None,
        channel_mask: ChannelMask | None = None,
        graph=None,
        example_input: torch.Tensor | None = None,
    ) -> None:
        masks: list[WeightMask] = []
        if weight_mask is not None:
            masks.append(weight_mask)
        if channel_mask is not None:
            if graph is None:
                if example_input is None:
                    raise HwpruneError("a channel mask needs the model's ChannelGraph or an example input to map it")
                from hwprune.graph_mapper import build_channel_graph

                graph = build_channel_graph(copy.deepcopy(model).cpu(), example_input.cpu())
            masks.append(channel_to_weight_mask(model, graph, channel_mask))
        params = dict(model.named_parameters())
        merged: dict[str, np.ndarray] = {}
        for m in masks:
            m.validate({n: tuple(p.shape) for n, p in params.items()})
            for name, keep in m.keep.items():
                merged[name] = merged[name] & keep if name in merged else np.asarray(keep, dtype=bool)
        self.weight_mask = WeightMask(merged, model=masks[0].model if masks else "")
        self.pairs: list[tuple[nn.Parameter, torch.Tensor]] = []  # (parameter, bool tensor of pruned entries)
        for name, keep in merged.items():
            if keep.all():
                continue
            p = params[name]
            self.pairs.append((p, torch.as_tensor(~keep, dtype=torch.bool, device=p.device)))

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def to(self, device: torch.device) -> MaskEnforcer:
        """Move the mask tensors to ``device`` (call after moving the model)."""
        self.pairs = [(p, k.to(device)) for p, k in self.pairs]
        return self

    @torch.no_grad()
    def apply(self) -> None:
        """Zero the pruned weights."""
        for p, drop in self.pairs:
            p.masked_fill_(drop, 0.0)

    @torch.no_grad()
    def mask_grads(self) -> None:
        """Zero the pruned weights' gradients (call between backward and the optimizer step)."""
        for p, drop in self.pairs:
            if p.grad is not None:
                p.grad.masked_fill_(drop, 0.0)

    def violations(self) -> int:
        """Count pruned weights that are not exactly zero (0 while the mask holds)."""
        return sum(int(((p.detach() != 0) & drop).sum().item()) for p, drop in self.pairs)
