"""Mask -> compacted model -> verified ONNX file, with the check that runs on every export."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError, VerificationError
from hwprune.export.compact import compact_model, masked_model
from hwprune.export.onnx_export import check_onnx, export_onnx, run_onnx, temp_path_beside
from hwprune.export.verify import DEFAULT_TOLERANCE, max_rel_diff
from hwprune.flops import count_flops
from hwprune.graph_mapper.types import ChannelGraph
from hwprune.prune.masks import ChannelMask


@dataclass
class ExportReport:
    """What an export produced and how well it matched the masked model."""

    model: str
    onnx_path: str | None
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int
    max_rel_diff: float | None  # compacted vs masked (None when inexact groups were pruned)
    onnx_max_rel_diff: float | None
    exporter: str | None
    groups_pruned: int
    channel_density: float
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        def row(name, before, after):
            return f"| {name} | {before:,} | {after:,} | {after / before:.3f} |"

        lines = [
            f"## {self.model}: compacted and verified",
            "",
            "| | before | after | ratio |",
            "|---|---:|---:|---:|",
            row("params", self.params_before, self.params_after),
            row("FLOPs", self.flops_before, self.flops_after),
            "",
            "FLOPs: fvcore, one multiply-add counts as one FLOP.",
            f"Groups pruned: {self.groups_pruned}; channel density over prunable groups {self.channel_density:.3f}.",
        ]
        if self.max_rel_diff is not None:
            lines.append(f"Compacted vs masked model: max relative difference {self.max_rel_diff:.2e}.")
        if self.onnx_path:
            lines.append(
                f"ONNX ({self.exporter} exporter) vs compacted model in onnxruntime: "
                f"max relative difference {self.onnx_max_rel_diff:.2e} -> {self.onnx_path}"
            )
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)


def check_writable(path: str | Path) -> Path:
    """Fail before any work when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise HwpruneError(f"output path {path} is a directory: give a file name such as {path / 'model.onnx'}")
    if not parent.is_dir():
        raise HwpruneError(f"output directory {parent} does not exist: create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise HwpruneError(f"output directory {parent} is not writable: choose another path")
    return path


def compact_and_verify(
    model: nn.Module,
    graph: ChannelGraph,
    mask: ChannelMask,
    example: torch.Tensor,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[nn.Module, float | None]:
    """Compact ``model`` and check it against the masked model on every exact group."""
    mask.validate(graph)
    compacted = compact_model(graph, mask)
    inexact = [graph.groups[g].name for g in mask.pruned_groups() if not graph.groups[g].exact]
    if inexact:
        return compacted, None
    oracle = masked_model(model, graph, mask).eval()
    with torch.no_grad():
        diff = max_rel_diff(compacted(example), oracle(example))
    if not diff <= tolerance:
        raise VerificationError(
            f"compacted {graph.model_name} differs from the masked model by {diff:.2e} (relative, tolerance "
            f"{tolerance:.0e}): this is a mapper bug, please report it with the model and mask"
        )
    return compacted, diff


def export_pruned(
    model: nn.Module,
    graph: ChannelGraph,
    mask: ChannelMask,
    example: torch.Tensor,
    onnx_path: str | Path | None,
    tolerance: float = DEFAULT_TOLERANCE,
    exporter: str = "dynamo",
) -> tuple[nn.Module, ExportReport]:
    """Compact, verify, export to ONNX, verify again in onnxruntime; write nothing unless all pass."""
    if onnx_path is not None:
        onnx_path = check_writable(onnx_path)
    model.eval()
    compacted, diff = compact_and_verify(model, graph, mask, example, tolerance)
    before, after = count_flops(model, example), count_flops(compacted, example)
    notes = []
    if diff is None:
        notes.append(
            "inexact groups pruned (a weight-free op mixes their channels): the compacted model "
            "is not expected to equal the masked model; ONNX is still checked against it"
        )
    onnx_diff, used = None, None
    if onnx_path is not None:
        tmp = temp_path_beside(onnx_path)
        try:
            used = export_onnx(compacted, example, tmp, exporter)
            check_onnx(tmp)
            with torch.no_grad():
                reference = compacted(example)
            onnx_diff = max_rel_diff(run_onnx(tmp, example), reference)
            if not onnx_diff <= tolerance:
                raise VerificationError(
                    f"ONNX export of {graph.model_name} differs from the compacted model in onnxruntime by "
                    f"{onnx_diff:.2e} (relative, tolerance {tolerance:.0e}); nothing was written"
                )
            os.replace(tmp, onnx_path)
        finally:
            tmp.unlink(missing_ok=True)
    report = ExportReport(
        model=graph.model_name,
        onnx_path=str(onnx_path) if onnx_path else None,
        params_before=before.params,
        params_after=after.params,
        flops_before=before.flops,
        flops_after=after.flops,
        max_rel_diff=diff,
        onnx_max_rel_diff=onnx_diff,
        exporter=used,
        groups_pruned=len(mask.pruned_groups()),
        channel_density=mask.channel_density(graph),
        notes=notes,
    )
    return compacted, report
