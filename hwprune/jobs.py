"""End-to-end jobs the CLI and tools/ call: model -> graph -> mask -> compact -> ONNX -> measure -> row."""

from __future__ import annotations

import json
import os
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
from hwprune.prune.channel import mask_from_scores
from hwprune.prune.importance import CHANNEL_IMPORTANCES
from hwprune.prune.masks import ChannelMask
from hwprune.results import ResultsStore, RunRecord, current_git_sha

IMPORTANCE_SAMPLES_PER_CLASS = 10  # the pruning set of the reference code: 10 x classes samples


def importance_scores(
    job: ModelInput, graph: ChannelGraph, name: str, data: str | None = None, data_dir: str | None = None, seed: int = 0
) -> dict:
    """Channel importances by name; gradient-based ones read a pruning set from ``data``."""
    scorer = CHANNEL_IMPORTANCES.get(name)
    opts = {"seed": seed} if name == "random" else {}
    if not scorer.needs_data:
        return scorer(job.model, graph, None, **opts)
    if data is None:
        raise HwpruneError(f"importance {name!r} needs data: pass --data digits (offline) or a dataset in --data-dir")
    from hwprune.data import dataset_info, get_dataset, make_loader

    size, channels = int(job.example.shape[-1]), int(job.example.shape[1])
    dataset = get_dataset(data, "train", data_dir=data_dir, image_size=size, channels=channels)
    classes = dataset_info(data).num_classes or 10
    loader = make_loader(dataset, batch_size=min(256, classes * IMPORTANCE_SAMPLES_PER_CLASS), shuffle=True, seed=seed)
    return scorer(job.model, graph, [next(iter(loader))])


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
    scores = importance_scores(job, graph, method, seed=seed)
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


BUDGET_POINTS = (0.25, 0.5, 0.75)  # kept fractions profiled when prune has to profile: little extrapolation
# channel-count alignment per backend: on this project's AVX-512 CPUs, ONNX Runtime ran resnet18 with
# 40/72/136/264 channels 1.6x slower than with 32/64/128/256 (benchmarks/results/alignment.md)
DEFAULT_ROUND_TO = {"ort-cpu": 16, "torch-cpu": 16, "cuda": 8, "ort-cuda": 8, "xla": 8}


def _next_budget(iterations: list[dict], target: float) -> float:
    """Secant step on solver budget -> measured ratio (multiplicative step until two points exist)."""
    last = iterations[-1]
    if len(iterations) >= 2:
        prev = iterations[-2]
        slope = (last["measured"] - prev["measured"]) / (last["budget"] - prev["budget"] or 1e-9)
        if slope > 0:
            return min(1.0, max(1e-3, last["budget"] + (target - last["measured"]) / slope))
    return min(1.0, max(1e-3, last["budget"] * target / last["measured"]))


def closed_loop(solve_at, measured_ratio, target: float, tolerance: float = 0.03, max_iterations: int = 5):
    """Solve at a budget, measure the solution, correct the budget until measured within tolerance.

    ``solve_at(budget)`` returns a Solution, ``measured_ratio(solution)`` its measured cost ratio.
    Stops early when the solver says the budget is unreachable. Returns the solution measured
    closest to ``target``, its measured ratio and every iteration (budget, predicted, measured).
    """
    iterations, best, budget = [], None, target
    for _ in range(max_iterations):
        sol = solve_at(budget)
        measured = measured_ratio(sol)
        iterations.append({"budget": budget, "predicted": sol.ratio, "measured": measured})
        if best is None or abs(measured - target) < abs(best[1] - target):
            best = (sol, measured)
        if abs(measured / target - 1.0) <= tolerance or not sol.reachable:
            break
        budget = _next_budget(iterations, target)
    return best[0], best[1], iterations


@dataclass
class BudgetOutcome:
    target_kind: str
    target: float
    predicted_ratio: float
    measured_ratio: float
    within_tolerance: bool
    iterations: list[dict]
    outcome: PruneOutcome | None
    model_fit: str = ""  # the latency model's held-out check, for latency budgets

    def table(self) -> str:
        lines = [
            f"## {self.target_kind} budget {self.target:.3f}: measured ratio {self.measured_ratio:.3f} "
            f"(predicted {self.predicted_ratio:.3f}) -> {'met' if self.within_tolerance else 'NOT met'}",
            "",
            *([self.model_fit, ""] if self.model_fit else []),
            "| iteration | solver budget | predicted ratio | measured ratio |",
            "|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {i} | {it['budget']:.4f} | {it['predicted']:.4f} | {it['measured']:.4f} |"
            for i, it in enumerate(self.iterations)
        ]
        if self.outcome is not None:
            lines += ["", self.outcome.table()]
        return "\n".join(lines)


def prune_to_budget(
    job: ModelInput,
    target_kind: str,
    target: float,
    out_dir: Path,
    backend: str = "ort-cpu",
    lut_path: Path | None = None,
    importance: str = "l1",
    threads: int = 1,
    repeats: int = 30,
    tolerance: float = 0.03,
    max_iterations: int = 5,
    results: Path | None = None,
    progress: bool = True,
    round_to: int | None = None,
    data: str | None = None,
    data_dir: str | None = None,
    finetune_epochs: int = 0,
) -> BudgetOutcome:
    """Solve for a mask within a FLOPs/params/latency budget, close the loop on measurement, export."""
    from hwprune.latency.lut import LUT
    from hwprune.latency.model import LatencyModel
    from hwprune.latency.profiler import profile_edges, profiled_groups
    from hwprune.prune.budget import CostFn, solve

    if target_kind not in ("flops", "params", "latency"):
        raise HwpruneError(f"budget kind must be flops, params or latency (got {target_kind})")
    if finetune_epochs and data is None:
        raise HwpruneError("--finetune-epochs needs --data (digits works offline)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if round_to is None:  # alignment buys speed: it matters to latency budgets, FLOPs/params are exact counts
        round_to = DEFAULT_ROUND_TO.get(backend, 1) if target_kind == "latency" else 1
    graph = job.graph()
    scores = importance_scores(job, graph, importance, data, data_dir)
    groups = profiled_groups(graph, round_to)
    if target_kind == "latency":
        if lut_path is not None and lut_path.exists():
            lut = LUT.load(lut_path)
        else:
            lut_path = lut_path or out_dir / "lut.json"
            journal = lut_path.with_suffix(".journal.jsonl")
            lut = profile_edges(
                job.model,
                graph,
                job.example,
                backend,
                points=BUDGET_POINTS,
                threads=threads,
                repeats=repeats,
                journal=journal,
                progress=progress,
                round_to=round_to,
            )
            lut.save(lut_path)
        lut.check(
            model=job.name,
            fingerprint=graph.fingerprint(),
            input_shape=list(job.example.shape),
            backend=backend,
            threads=threads,
        )
        latency_model = LatencyModel(lut, graph)
        model_fit = latency_model.fit_summary()
        cost = CostFn.latency(latency_model)
    else:
        model_fit = ""
        cost = CostFn.macs(graph) if target_kind == "flops" else CostFn.params(graph)

    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        if target_kind == "latency":
            from hwprune.export.compact import compact_model

            dense = Path(tmp) / "dense.onnx"
            export_onnx(job.model, job.example, dense, "torchscript")

            def measured_ratio(sol):
                base, cand = measure(
                    backend,
                    [dense, compact_model(graph, sol.mask)],
                    job.example,
                    threads=threads,
                    repeats=repeats,
                    exporter="torchscript",
                )
                return cand.median_ms / base.median_ms
        else:

            def measured_ratio(sol):
                return sol.ratio  # exact: the cost formula is the count, and the budget a hard cap

        sol, measured, iterations = closed_loop(
            lambda budget: solve(graph, groups, scores, cost, budget, round_to=round_to),
            measured_ratio,
            target,
            tolerance,
            max_iterations if target_kind == "latency" else 1,  # a FLOPs/params budget is a cap, met at once
        )
    predicted = sol.ratio
    sol.mask.meta.update(
        {"method": importance, "target_kind": target_kind, "target": target, "input_shape": list(job.example.shape)}
    )
    sol.mask.save(out_dir / "mask.json")
    outcome = prune_export_measure(
        job,
        sol.mask,
        graph,
        out_dir / f"{job.name.split(':')[-1]}_pruned.onnx",
        importance,
        threads=threads,
        repeats=repeats,
        results=None,
        measure_latency=backend == "ort-cpu",
    )
    if finetune_epochs:
        _finetune_and_reexport(job, graph, sol.mask, outcome, data, data_dir, finetune_epochs)
    outcome.record.target_kind = target_kind
    outcome.record.target_value = target
    outcome.record.extra = json.dumps(
        {
            **json.loads(outcome.record.extra),
            "predicted_ratio": predicted,
            "measured_ratio": measured,
            "iterations": iterations,
            "notes": sol.notes,
        }
    )
    if results is not None:
        ResultsStore(results).append(outcome.record)
    return BudgetOutcome(
        target_kind,
        target,
        predicted,
        measured,
        abs(measured / target - 1.0) <= tolerance if target_kind == "latency" else measured <= target + 1e-9,
        iterations,
        outcome,
        model_fit,
    )


def _finetune_and_reexport(job, graph, mask, outcome, data, data_dir, epochs) -> None:
    """Fine-tune the verified compacted model, then export it again (checked in onnxruntime)."""
    from hwprune.data import get_dataset, make_loader
    from hwprune.export.compact import compact_model
    from hwprune.export.onnx_export import check_onnx, run_onnx, temp_path_beside
    from hwprune.export.verify import max_rel_diff
    from hwprune.train import TrainConfig, evaluate, train

    size, channels = int(job.example.shape[-1]), int(job.example.shape[1])
    train_set = get_dataset(data, "train", data_dir=data_dir, image_size=size, channels=channels)
    test_set = get_dataset(data, "test", data_dir=data_dir, image_size=size, channels=channels)
    train_loader = make_loader(train_set, batch_size=64, shuffle=True, seed=0)
    test_loader = make_loader(test_set, batch_size=128, shuffle=False)
    compacted = compact_model(graph, mask)
    before = evaluate(compacted, test_loader, "cpu")
    result = train(compacted, train_loader, test_loader, TrainConfig(epochs=epochs, lr=0.01, batch_size=64))
    compacted.eval()
    path = Path(outcome.export.onnx_path)
    tmp = temp_path_beside(path)
    try:
        export_onnx(compacted, job.example, tmp)
        check_onnx(tmp)
        with torch.no_grad():
            diff = max_rel_diff(run_onnx(tmp, job.example), compacted(job.example))
        if not diff <= 1e-4:
            raise HwpruneError(f"fine-tuned ONNX differs from the fine-tuned model by {diff:.2e}; nothing written")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    outcome.record.accuracy_top1 = result.last_top1
    outcome.record.accuracy_top5 = result.last_top5
    outcome.export.notes.append(
        f"fine-tuned {epochs} epoch(s) on {data}: top-1 {before.top1:.3f} -> {result.last_top1:.3f}; "
        f"re-exported ONNX matches in onnxruntime ({diff:.1e})"
    )
