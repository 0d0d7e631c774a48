"""End-to-end jobs the CLI and tools/ call: model -> graph -> mask -> compact -> ONNX -> measure -> row."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.export.onnx_export import export_onnx
from hwprune.export.pipeline import ExportReport, check_writable, export_pruned
from hwprune.graph_mapper import ChannelGraph, build_channel_graph
from hwprune.latency import measure
from hwprune.models import get_model, model_spec
from hwprune.prune.channel import mask_from_scores, norm_scores, random_scores
from hwprune.prune.masks import ChannelMask
from hwprune.registry import Registry
from hwprune.results import ResultsStore, RunRecord, current_git_sha

CHANNEL_SCORERS: Registry = Registry("channel scorer")
CHANNEL_SCORERS.add("l1", lambda graph, model, seed: norm_scores(graph, model, p=1))
CHANNEL_SCORERS.add("l2", lambda graph, model, seed: norm_scores(graph, model, p=2))
CHANNEL_SCORERS.add("random", lambda graph, model, seed: random_scores(graph, seed))


@dataclass
class ModelInput:
    """A model built by name with the input it is mapped and exported at."""

    name: str
    model: nn.Module
    example: torch.Tensor

    @classmethod
    def build(
        cls,
        name: str,
        input_size: int | None = None,
        batch: int = 1,
        num_classes: int | None = None,
        in_channels: int | None = None,
        seed: int = 0,
    ) -> ModelInput:
        if batch < 1:
            raise HwpruneError(f"--batch must be at least 1 (got {batch})")
        spec = model_spec(name)
        size = input_size or spec.default_input_size
        channels = in_channels or spec.in_channels
        torch.manual_seed(seed)
        kwargs = {"input_size": input_size} if input_size else {}
        model = get_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs).eval()
        example = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
        return cls(name, model, example)

    def graph(self) -> ChannelGraph:
        return build_channel_graph(self.model, self.example, self.name)


def make_mask(job: ModelInput, graph: ChannelGraph, method: str, ratio: float, seed: int = 0) -> ChannelMask:
    if not 0.0 <= ratio < 1.0:
        raise HwpruneError(f"--ratio is the share of channels to remove per group, in [0, 1) (got {ratio})")
    scores = CHANNEL_SCORERS.get(method)(graph, job.model, seed)
    mask = mask_from_scores(graph, scores, ratio)
    mask.meta.update({"method": method, "ratio": ratio, "input_shape": list(job.example.shape)})
    return mask


@dataclass
class PruneOutcome:
    export: ExportReport
    baseline_ms: float | None
    pruned_ms: float | None
    iqr_ms: tuple[float, float] | None
    threads: int
    record: RunRecord

    def table(self) -> str:
        text = self.export.table()
        if self.baseline_ms is not None:
            speedup = self.baseline_ms / self.pruned_ms
            text += (
                f"\n\n| onnxruntime CPU latency ({self.threads} thread(s), batch {self.record.latency_batch}) | "
                "dense | pruned | speed-up |\n|---|---:|---:|---:|\n"
                f"| median ms (IQR) | {self.baseline_ms:.2f} ({self.iqr_ms[0]:.2f}) | "
                f"{self.pruned_ms:.2f} ({self.iqr_ms[1]:.2f}) | {speedup:.2f}x |"
            )
        return text


def prune_export_measure(
    job: ModelInput,
    mask: ChannelMask,
    graph: ChannelGraph,
    onnx_path: Path,
    method: str,
    threads: int = 1,
    repeats: int = 30,
    results: Path | None = None,
    measure_latency: bool = True,
    exporter: str = "dynamo",
) -> PruneOutcome:
    """Compact and export with verification, time dense vs pruned ONNX in onnxruntime, log a row."""
    check_writable(onnx_path)
    if results is not None:
        check_writable(results)
    _, report = export_pruned(job.model, graph, mask, job.example, onnx_path, exporter=exporter)
    base_ms = pruned_ms = iqr = None
    if measure_latency:
        with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
            dense = Path(tmp) / "dense.onnx"
            export_onnx(job.model, job.example, dense)
            before, after = measure("ort-cpu", [dense, onnx_path], job.example, threads=threads, repeats=repeats)
        base_ms, pruned_ms, iqr = before.median_ms, after.median_ms, (before.iqr_ms, after.iqr_ms)
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
        flops=report.flops_after,
        flops_before=report.flops_before,
        flops_counter="fvcore",
        latency_backend="ort-cpu" if measure_latency else None,
        latency_ms_median=pruned_ms,
        latency_ms_iqr=iqr[1] if iqr else None,
        latency_threads=threads if measure_latency else None,
        latency_batch=int(job.example.shape[0]),
        latency_before_ms=base_ms,
        artifacts=json.dumps({"onnx": str(onnx_path)}),
        extra=json.dumps(
            {
                "max_rel_diff": report.max_rel_diff,
                "onnx_max_rel_diff": report.onnx_max_rel_diff,
                "exporter": report.exporter,
                "input_shape": list(job.example.shape),
            }
        ),
    )
    if results is not None:
        ResultsStore(results).append(record)
    return PruneOutcome(report, base_ms, pruned_ms, iqr, threads, record)
