"""FLOPs and parameter counts, per model and per layer.

Convention: **one multiply-add = one FLOP**, as fvcore counts. fvcore's ``FlopCountAnalysis`` is the
primary counter; ``torch.utils.flop_counter.FlopCounterMode`` (which counts 2 FLOPs per
multiply-add, so its total is halved here) is run as a cross-check and stored beside it. The two
differ slightly by design: fvcore also counts normalisation and adaptive pooling, torch counts only
matmul/convolution-like ops.

Ops fvcore has no handler for (and does not deliberately ignore) are counted as zero; their names and
call counts are kept in :attr:`FlopsReport.unsupported_ops` instead of being printed as warnings.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["FlopsReport", "count_flops", "count_params", "params_per_module"]

FLOP_CONVENTION = "1 multiply-add = 1 FLOP (fvcore)"


@dataclass(frozen=True)
class FlopsReport:
    """FLOPs and parameters of one model on one example input.

    Attributes:
        flops: Total FLOPs from :attr:`counter` (1 multiply-add = 1 FLOP).
        flops_torch: Total from ``torch.utils.flop_counter`` divided by 2 (same convention); the
            cross-check.
        params: Unique parameters (shared tensors counted once).
        counter: Which counter produced :attr:`flops`: ``"fvcore"``, or ``"torch"`` when fvcore could
            not trace the model.
        per_module_flops: FLOPs of each leaf module that owns parameters (qualified name -> FLOPs).
        per_module_params: Parameters directly owned by each module (qualified name -> count); a
            shared tensor is attributed to the first module that owns it, so the values sum to
            :attr:`params`.
        unsupported_ops: Ops the counter met but could not count (op name -> number of calls); they
            contributed 0 FLOPs.
    """

    flops: int
    flops_torch: int
    params: int
    counter: str
    per_module_flops: dict[str, int] = field(default_factory=dict)
    per_module_params: dict[str, int] = field(default_factory=dict)
    unsupported_ops: dict[str, int] = field(default_factory=dict)

    @property
    def uncounted_ops(self) -> list[str]:
        """Sorted names of the ops that were seen but counted as 0 FLOPs."""
        return sorted(self.unsupported_ops)

    @property
    def per_module(self) -> dict[str, int]:
        """Alias of :attr:`per_module_flops`."""
        return self.per_module_flops

    def table(self, top: int | None = None) -> str:
        """Render per-layer FLOPs and params as a markdown table.

        Args:
            top: Keep only the ``top`` layers with the most FLOPs (ties broken by params); all
                layers when None.

        Returns:
            A markdown table followed by a totals line and a note naming the FLOP convention and any
            uncounted ops.
        """
        names = list(dict.fromkeys([*self.per_module_flops, *self.per_module_params]))
        rows = [(n, self.per_module_flops.get(n), self.per_module_params.get(n, 0)) for n in names]
        if top is not None:
            rows = sorted(rows, key=lambda r: (r[1] or 0, r[2]), reverse=True)[: max(top, 0)]
        total_flops = self.flops or 0
        lines = ["| layer | FLOPs | % FLOPs | params |", "|---|---:|---:|---:|"]
        for name, flops, params in rows:
            share = f"{100.0 * flops / total_flops:.2f}" if flops is not None and total_flops else "-"
            flops_s = f"{flops:,}" if flops is not None else "-"
            lines.append(f"| {name or '(root)'} | {flops_s} | {share} | {params:,} |")
        lines.append(f"| **total** | **{self.flops:,}** | 100.00 | **{self.params:,}** |")
        note = (
            f"Note: {FLOP_CONVENTION}; counter={self.counter}; "
            f"torch.utils.flop_counter cross-check = {self.flops_torch:,} (its count / 2)."
        )
        if self.unsupported_ops:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(self.unsupported_ops.items()))
            note += f" Uncounted ops (0 FLOPs): {ops}."
        return "\n".join([*lines, "", note])

    def __str__(self) -> str:
        return (
            f"FLOPs {self.flops:,} ({FLOP_CONVENTION}; torch cross-check {self.flops_torch:,}), "
            f"params {self.params:,}"
            + (f", uncounted ops: {', '.join(self.uncounted_ops)}" if self.unsupported_ops else "")
        )


def count_params(model: nn.Module) -> int:
    """Count the unique parameters of ``model``; a tensor shared by several modules counts once."""
    return sum(p.numel() for p in model.parameters())  # parameters() de-duplicates by identity


def params_per_module(model: nn.Module) -> dict[str, int]:
    """Parameters directly owned by each module, keyed by qualified name (``""`` is the root).

    Only modules that own parameters appear. A shared tensor is attributed to the first module (in
    ``named_modules`` order) that owns it, so the values sum to :func:`count_params`.
    """
    seen: set[int] = set()
    out: dict[str, int] = {}
    for name, module in model.named_modules():
        n = 0
        for p in module.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        if next(module.parameters(recurse=False), None) is not None:
            out[name] = n
    return out


@contextmanager
def _eval_no_grad(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode under no_grad; restore each module's own flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _as_tuple(example_input: Any) -> tuple[Any, ...]:
    if isinstance(example_input, tuple):
        return example_input
    if isinstance(example_input, list):
        return tuple(example_input)
    return (example_input,)


def _leaf_param_modules(model: nn.Module) -> list[str]:
    return [
        name
        for name, m in model.named_modules()
        if next(m.children(), None) is None and next(m.parameters(recurse=False), None) is not None
    ]


def _torch_count(model: nn.Module, inputs: Sequence[Any]) -> tuple[int, dict[str, int]]:
    """Total and per-module FLOPs from FlopCounterMode, halved to 1 multiply-add = 1 FLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs)
    total = int(round(counter.get_total_flops() / 2))
    prefix = type(model).__name__ + "."
    per_module: dict[str, int] = {}
    for key, ops in counter.get_flop_counts().items():
        name = str(key)
        if name.startswith(prefix):
            per_module[name[len(prefix) :]] = int(round(sum(ops.values()) / 2))
    return total, per_module


def native_mha_flops(inputs: list, outputs: list) -> int:
    """nn.MultiheadAttention's fused inference op (fvcore has no handler): projections + two matmuls.

    Counted as the unfused module computes it, so a compacted attention (plain linears and
    matmuls) is comparable with the dense one.
    """
    q, k, v = (inputs[i].type().sizes() for i in range(3))
    embed = q[-1]
    q_tokens, k_tokens = math.prod(q[:-1]), math.prod(k[:-1])
    per_query_key = k[-2] if len(k) > 1 else 1  # keys each query attends to
    projections = (q_tokens + 2 * k_tokens) * embed * embed + q_tokens * embed * embed
    return projections + 2 * q_tokens * per_query_key * embed


def count_flops(model: nn.Module, example_input: Any) -> FlopsReport:
    """Count FLOPs (1 multiply-add = 1 FLOP) and parameters of ``model`` on ``example_input``.

    The model runs in eval mode under ``torch.no_grad``; every module's training flag is restored
    afterwards. fvcore is the primary counter; if it cannot trace the model, the torch counter's
    total is used and :attr:`FlopsReport.counter` says ``"torch"``.

    Args:
        model: The model to count.
        example_input: A tensor, or a tuple/list of positional inputs.

    Returns:
        A :class:`FlopsReport` with both counters' totals, per-layer FLOPs and params, and the ops
        fvcore could not count.
    """
    from fvcore.nn import FlopCountAnalysis

    inputs = _as_tuple(example_input)
    leaves = _leaf_param_modules(model)
    with _eval_no_grad(model):
        torch_total, torch_per_module = _torch_count(model, inputs)
        try:
            analysis = FlopCountAnalysis(model, inputs)
            analysis.set_op_handle("aten::_native_multi_head_attention", native_mha_flops)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            fv_logger = logging.getLogger("fvcore")
            old_level = fv_logger.level
            fv_logger.setLevel(logging.ERROR)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    total = int(analysis.total())
                    by_module = analysis.by_module()
                    unsupported = {str(k): int(v) for k, v in analysis.unsupported_ops().items()}
            finally:
                fv_logger.setLevel(old_level)
            counter_name = "fvcore"
            per_module_flops = {n: int(by_module.get(n, 0)) for n in leaves}
        except Exception:  # fvcore traces with torch.jit, which some models defeat
            total = torch_total
            counter_name = "torch"
            unsupported = {}
            per_module_flops = {n: int(torch_per_module.get(n, 0)) for n in leaves}
    return FlopsReport(
        flops=total,
        flops_torch=torch_total,
        params=count_params(model),
        counter=counter_name,
        per_module_flops=per_module_flops,
        per_module_params=params_per_module(model),
        unsupported_ops=dict(sorted(unsupported.items())),
    )
