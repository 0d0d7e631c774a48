"""Shipping stage: compact with proof, write the verified ONNX file, time it afresh against dense, log a row.

A PyTorch input ships the dynamo (or TorchScript) export of its compacted module; an ONNX input ships its
own file rewritten with fewer channels. Either way the file written is the one that is timed.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune import checks
from hwprune.export.onnx_export import DEFAULT_EXPORTER
from hwprune.export.pipeline import ExportReport, export_pruned
from hwprune.files import check_writable
from hwprune.graph_mapper import ChannelGraph
from hwprune.latency import measure_ratio
from hwprune.latency.backends import BACKENDS, DEFAULT_BACKEND
from hwprune.latency.measurement import SESSIONS, LatencyRatio, Measurement
from hwprune.prune.masks import ChannelMask
from hwprune.results import ResultsStore, RunRecord, current_git_sha
from hwprune.workflow.inputs import ModelInput, OnnxInput


@dataclass
class PruneOutcome:
    """An export and, when measured, the shipped artifact timed fresh against the dense one."""

    export: ExportReport  # or, for an ONNX input, the OnnxPruneReport of its rewritten file
    timing: LatencyRatio | None  # shipped artifact vs the dense model in the same form, over fresh session pairs
    threads: int
    record: RunRecord
    backend: str = DEFAULT_BACKEND
    compacted: nn.Module | None = None  # the verified compacted model (None for an ONNX input)
    graph: ChannelGraph | None = None
    mask: ChannelMask | None = None

    @property
    def baseline(self) -> Measurement | None:
        """The dense model, in the form the shipped artifact is timed in (rounds of every session pooled)."""
        return None if self.timing is None else self.timing.baseline

    @property
    def shipped(self) -> Measurement | None:
        """The shipped artifact: the ONNX file on onnxruntime, else the compacted model."""
        return None if self.timing is None else self.timing.candidate

    @property
    def ratio(self) -> float | None:
        """Shipped / dense latency, the mean over session pairs (None when not measured)."""
        return None if self.timing is None else self.timing.ratio

    def table(self) -> str:
        text = self.export.table()
        if self.timing is not None:
            base, shipped, pairs = self.baseline, self.shipped, len(self.timing.candidates)
            what = "the shipped ONNX file" if BACKENDS.get(self.backend).times_onnx else "the compacted model"
            per_pair = ", ".join(f"{r:.3f}" for r, _ in self.timing.per_session)
            text += (
                f"\n\n| {self.backend} latency of {what} ({self.threads} thread(s), batch {self.record.latency_batch}, "
                f"{pairs} fresh session pair(s), {shipped.samples} paired rounds) | dense | pruned | ratio |\n"
                f"|---|---:|---:|---:|\n"
                f"| median ms (IQR) | {base.median_ms:.2f} ({base.iqr_ms:.2f}) | "
                f"{shipped.median_ms:.2f} ({shipped.iqr_ms:.2f}) | {self.timing.ratio:.3f} +- {self.timing.ci95:.3f} |"
                f"\n\nRatio per session pair: {per_pair}."
            )
            if shipped.other_load is not None:
                text += f"\n\nOther processes used {shipped.other_load:.2f} CPU cores on average meanwhile."
        return text


def time_shipped(
    backend: str,
    graph: ChannelGraph,
    compacted: nn.Module | None,
    onnx_path: Path,
    example: torch.Tensor,
    exporter: str,
    threads: int = 1,
    repeats: int = 30,
    precision: float | None = 0.005,
    sessions: int = SESSIONS,
) -> LatencyRatio:
    """Time the artifact the user gets, fresh, against the dense model in the same form, over ``sessions`` pairs.

    onnxruntime backends time the very ONNX file written (against the dense model in the same form: exported
    by the same exporter, or for an ONNX input its file rewritten with every channel kept); torch, CUDA and
    XLA backends time the compacted module against the uncompacted one (both GraphModules). Rounds are added
    (to 10x ``repeats``) until the pairs' standard error is within ``precision``.
    """
    from hwprune.latency.profiler import baseline_for

    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        dense = baseline_for(graph, example, backend, Path(tmp), exporter)
        shipped = onnx_path if BACKENDS.get(backend).times_onnx else compacted
        return measure_ratio(
            backend,
            dense,
            shipped,
            example,
            sessions=sessions,
            threads=threads,
            repeats=repeats,
            precision=precision,
            max_repeats=10 * repeats,
            exporter=exporter,
        )


def _export(job, graph: ChannelGraph, mask: ChannelMask, onnx_path: Path, exporter: str):
    """(report, compacted module or None, FLOPs before, after, their counter) for either kind of input."""
    if isinstance(job, OnnxInput):
        from hwprune.export.onnx_compact import prune_onnx_file
        from hwprune.graph_mapper.cost import CostModel, kept_shares

        report = prune_onnx_file(job.path, mask, onnx_path, graph=graph)
        costs = CostModel(graph)
        return report, None, costs.total_macs, costs.cost(kept_shares(graph, mask))[0], "hwprune (graph MACs)"
    compacted, report = export_pruned(job.model, graph, mask, job.example, onnx_path, exporter=exporter)
    return report, compacted, report.flops_before, report.flops_after, "fvcore"


def prune_export_measure(
    job: ModelInput | OnnxInput,
    mask: ChannelMask,
    graph: ChannelGraph,
    onnx_path: Path,
    method: str,
    threads: int = 1,
    repeats: int = 30,
    results: Path | None = None,
    measure_latency: bool = True,
    exporter: str = DEFAULT_EXPORTER,
    backend: str = DEFAULT_BACKEND,
    precision: float | None = 0.005,
    sessions: int = SESSIONS,
) -> PruneOutcome:
    """Compact and export with verification, time the shipped artifact against dense on ``backend``, log a row."""
    checks.timing(threads, repeats)
    check_writable(onnx_path)
    if results is not None:
        check_writable(results)
    report, compacted, flops_before, flops_after, counter = _export(job, graph, mask, onnx_path, exporter)
    used_exporter = getattr(report, "exporter", None)
    timing = None
    if measure_latency:
        timing = time_shipped(
            backend,
            graph,
            compacted,
            Path(onnx_path),
            job.example,
            used_exporter or exporter,
            threads,
            repeats,
            precision,
            sessions,
        )
    before, after = (timing.baseline, timing.candidate) if timing else (None, None)
    record = RunRecord(
        git_sha=current_git_sha(),
        model=job.name,
        dataset="none",
        method=method,
        mask_kind="channel",
        target_kind="density",
        target_value=mask.meta.get("ratio"),
        density=report.channel_density,
        density_whole_model=report.params_after / report.params_before,
        params=report.params_after,
        params_before=report.params_before,
        flops=int(flops_after),
        flops_before=int(flops_before),
        flops_counter=counter,
        latency_backend=backend if measure_latency else None,
        latency_ms_median=after.median_ms if after else None,
        latency_ms_iqr=after.iqr_ms if after else None,
        latency_threads=threads if measure_latency else None,
        latency_batch=int(job.example.shape[0]),
        latency_before_ms=before.median_ms if before else None,
        artifacts=json.dumps(
            {"onnx": str(onnx_path), **({"source": str(job.path)} if isinstance(job, OnnxInput) else {})}
        ),
        extra=json.dumps(
            {
                "max_rel_diff": report.max_rel_diff,
                "onnx_max_rel_diff": getattr(report, "onnx_max_rel_diff", report.max_rel_diff),
                "random_max_rel_diff": report.random_max_rel_diff,
                "onnx_random_max_rel_diff": getattr(report, "onnx_random_max_rel_diff", report.random_max_rel_diff),
                "check_seed": report.check_seed,
                "exporter": used_exporter,
                "input_shape": list(job.example.shape),
                **({"shipped_ratio": timing.ratio, "sessions": sessions} if timing else {}),
            }
        ),
    )
    if results is not None:
        ResultsStore(results).append(record)
    return PruneOutcome(report, timing, threads, record, backend, compacted, graph, mask)
