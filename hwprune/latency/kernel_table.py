"""Kernel tables: each conv/linear op timed alone over the channel counts a solver may choose.

PyTorch on CPU (oneDNN) picks kernels by shape, so an op's time is jagged in its channel counts: a
7x7 conv with 416 input channels took 2.94 ms, with 448 1.95 ms. A latency model smooth in MACs
cannot know that; a table of the op timed alone at every count of the alignment grid can. Each
channel axis is swept with the other axis whole (the table is separable: an op's time at
(c_out, c_in) is taken as T(c_out, C_in) * T(C_out, c_in) / T(C_out, C_in)), which costs one short
timing per grid count instead of one per pair. The latency model then uses, per op, the table's
time ratio where it used the MAC fraction (:class:`hwprune.latency.model.LatencyModel`), so the
solver sees a count that is slow on this backend as slow.

Grouped convolutions other than depthwise have no table (their MAC fraction stands in).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hwprune.graph_mapper.cost import CostModel
from hwprune.graph_mapper.types import ChannelGraph

MAX_POINTS = 48  # per axis: wide axes are swept on a coarser multiple of the grid


def axis_counts(size: int, step: int) -> list[int]:
    """The counts an axis of ``size`` channels is timed at: multiples of ``step`` (coarser when wide), and size."""
    step = max(step, int(np.ceil(size / MAX_POINTS / step)) * step)
    return sorted({*range(step, size, step), size})


def _resized(module: nn.Module, out_channels: int, in_channels: int) -> nn.Module:
    """A fresh copy of a Conv/Linear ``module`` with other channel counts (depthwise stays depthwise)."""
    if isinstance(module, nn.Linear):
        return nn.Linear(in_channels, out_channels, bias=module.bias is not None)
    depthwise = module.groups == module.in_channels == module.out_channels and module.groups > 1
    return type(module)(
        in_channels,
        out_channels,
        module.kernel_size,
        stride=module.stride,
        padding=module.padding,
        dilation=module.dilation,
        groups=in_channels if depthwise else 1,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )


def _time_alone(module: nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median ms of one call of ``module`` on ``x`` (two warm-up calls first)."""
    module.eval()
    samples = []
    with torch.inference_mode():
        for i in range(repeats + 2):
            start = time.perf_counter()
            module(x)
            if i >= 2:
                samples.append((time.perf_counter() - start) * 1e3)
    return statistics.median(samples)


def _op_inputs(module: nn.Module, example: torch.Tensor, weights: set[str]) -> dict[str, tuple[nn.Module, tuple]]:
    """Per weight tensor of ``weights``: its owning Conv/Linear module and the input shape it sees."""
    found: dict[str, tuple[nn.Module, tuple]] = {}

    def record(weight):
        def hook(m, args):  # returns None: the call's arguments stay as they are
            found.setdefault(weight, (m, tuple(args[0].shape)))

        return hook

    handles = []
    for name, m in module.named_modules():
        weight = f"{name}.weight" if name else "weight"
        if weight in weights and isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            handles.append(m.register_forward_pre_hook(record(weight)))
    try:
        with torch.inference_mode():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return found


def measure_kernel_table(
    graph: ChannelGraph, module: nn.Module, example: torch.Tensor, step: int, threads: int = 1, repeats: int = 5,
    progress: bool = True,
) -> dict[str, list[dict]]:  # fmt: skip
    """Per weight: for each channel axis that can shrink, ``{"axis", "counts", "ms"}`` of the op timed alone.

    ``module`` is the dense model as the backend runs it (``compact_model`` of the full mask: same
    module names as the graph's tensors).
    """
    torch.set_num_threads(threads)
    costs = CostModel(graph)
    weights = {t for t, e in costs.tensors.items() if e["macs"] > 0}
    ops = _op_inputs(module, example, weights)
    shrinking = {
        t: sorted({axis for axis, (gids, _) in zip(costs.tensors[t]["axis"], costs.tensors[t]["axes"], strict=True)
                   if any(g >= 0 and graph.group(g).prunable for g in gids)})
        for t in ops
    }  # fmt: skip
    work = [(t, axis) for t, axes in shrinking.items() for axis in axes]
    table: dict[str, list[dict]] = {}
    for weight, axis in tqdm(work, desc=f"kernel table of {graph.model_name}", unit="axis", disable=not progress):
        m, shape = ops[weight]
        out_c, in_c = _channels(m)
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d) and 1 < m.groups and not _depthwise(m):
            continue
        entry = {"axis": axis, "counts": [], "ms": []}
        for count in axis_counts(out_c if axis == 0 else in_c, step):
            if _depthwise(m):
                new_out = new_in = count
            else:
                new_out, new_in = (count, in_c) if axis == 0 else (out_c, count)
            x = torch.randn(*_input_shape(m, shape, new_in))
            entry["counts"].append(count)
            entry["ms"].append(_time_alone(_resized(m, new_out, new_in), x, repeats))
        table.setdefault(weight, []).append(entry)
    return table


def _depthwise(m: nn.Module) -> bool:
    return not isinstance(m, nn.Linear) and m.groups == m.in_channels == m.out_channels and m.groups > 1


def _channels(m: nn.Module) -> tuple[int, int]:
    return (m.out_features, m.in_features) if isinstance(m, nn.Linear) else (m.out_channels, m.in_channels)


def _input_shape(m: nn.Module, shape: tuple, in_channels: int) -> tuple:
    """``shape`` (what the op saw) with its channel axis (last for Linear, 1 for convs) set to ``in_channels``."""
    shape = list(shape)
    shape[-1 if isinstance(m, nn.Linear) else 1] = in_channels
    return tuple(shape)


class KernelRatios:
    """An op's time at a mask's channel counts relative to its dense time, from a kernel table."""

    def __init__(self, table: dict[str, list[dict]], costs: CostModel) -> None:
        self.costs = costs
        self.table = {
            t: [(e["axis"], np.asarray(e["counts"], float), np.asarray(e["ms"], float)) for e in entries]
            for t, entries in table.items()
            if t in costs.tensors
        }

    def __contains__(self, tensor: str) -> bool:
        return tensor in self.table

    def ratio(self, tensor: str, shares: dict[int, float]) -> float:
        """Product over the op's tabled axes of (time at the kept count) / (time at the full count)."""
        entry = self.costs.tensors[tensor]
        kept = {}
        for axis, (gids, weights) in zip(entry["axis"], entry["axes"], strict=True):
            kept[axis] = float(np.dot(weights, [shares.get(g, 1.0) for g in gids]))
        ratio = 1.0
        for axis, counts, ms in self.table[tensor]:
            count = kept.get(axis, 1.0) * counts[-1]
            ratio *= float(np.interp(count, counts, ms)) / ms[-1]
        return ratio
