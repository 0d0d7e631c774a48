"""End-to-end jobs the CLI and tools/ call: model -> graph -> mask -> compact -> ONNX -> measure -> row."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune import checks
from hwprune.errors import HwpruneError
from hwprune.export.onnx_export import DEFAULT_EXPORTER
from hwprune.export.pipeline import ExportReport, check_writable, export_pruned
from hwprune.graph_mapper import ChannelGraph, build_channel_graph
from hwprune.latency import measure
from hwprune.latency.measurement import Measurement, paired_ratio
from hwprune.models import get_model, model_spec
from hwprune.prune.channel import mask_from_scores
from hwprune.prune.importance import CHANNEL_IMPORTANCES
from hwprune.prune.masks import ChannelMask
from hwprune.results import ResultsStore, RunRecord, current_git_sha

IMPORTANCE_SAMPLES = 2560  # seed 001's --imp_samples: gradient statistics over 20 mini-batches of 128
IMPORTANCE_BATCH = 128


def importance_scores(
    job: ModelInput,
    graph: ChannelGraph,
    name: str,
    data: str | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    samples: int = IMPORTANCE_SAMPLES,
) -> dict:
    """Channel importances by name; gradient-based ones average over ``samples`` examples of ``data``.

    The samples come in mini-batches (``IMPORTANCE_BATCH``), so E[g²] is a mean of per-batch squares, as
    Fisher/Taylor define it, not the square of one batch's mean gradient.
    """
    scorer = CHANNEL_IMPORTANCES.get(name)
    opts = {"seed": seed} if name == "random" else {}
    if not scorer.needs_data:
        return scorer(job.model, graph, None, **opts)
    if data is None:
        raise HwpruneError(f"importance {name!r} needs data: pass --data digits (offline) or a dataset in --data-dir")
    if not isinstance(data, str):  # the user's own loader (or any iterable of (x, y) batches)
        return scorer(job.model, graph, first_samples(data, samples))
    return scorer(job.model, graph, importance_batches(job.example, data, data_dir, samples, seed))


def importance_batches(example: torch.Tensor, data: str, data_dir: str | None, samples: int, seed: int = 0) -> list:
    """The first ``samples`` shuffled training examples of ``data``, as (x, y) mini-batches."""
    from hwprune.data import get_dataset, make_loader

    if samples < 1:
        raise HwpruneError(f"--imp-samples is a number of examples, at least 1 (got {samples})")
    size, channels = int(example.shape[-1]), int(example.shape[1])
    dataset = get_dataset(data, "train", data_dir=data_dir, image_size=size, channels=channels)
    return first_samples(
        make_loader(dataset, batch_size=min(IMPORTANCE_BATCH, samples), shuffle=True, seed=seed), samples
    )


def first_samples(batches, samples: int) -> list:
    """The batches of an iterable of (x, y) up to ``samples`` examples (the last one cut to fit)."""
    out, taken = [], 0
    for x, y in batches:
        x, y = x[: samples - taken], y[: samples - taken]
        out.append((x, y))
        taken += len(y)
        if taken >= samples:
            break
    if not out:
        raise HwpruneError("the data for importance scoring yielded no batches: pass a non-empty DataLoader")
    return out


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
        weights: str | None = None,
    ) -> ModelInput:
        """Build zoo model ``name`` (random weights, or ``weights``: a file or a torchvision weight name)."""
        checks.model_input(input_size, batch, num_classes, in_channels, seed)
        spec = model_spec(name)
        size = input_size or spec.default_input_size
        channels = in_channels or spec.in_channels
        torch.manual_seed(seed)
        kwargs = {"input_size": input_size} if input_size else {}
        model = get_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs).eval()
        if weights is not None:
            from hwprune.models.weights import load_weights

            load_weights(model, weights, name)
        example = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
        return cls(name, model, example)

    def graph(self) -> ChannelGraph:
        return build_channel_graph(self.model, self.example, self.name)


def make_mask(
    job: ModelInput,
    graph: ChannelGraph,
    method: str,
    ratio: float,
    seed: int = 0,
    data: str | None = None,
    data_dir: str | None = None,
    imp_samples: int = IMPORTANCE_SAMPLES,
) -> ChannelMask:
    if not 0.0 <= ratio < 1.0:
        raise HwpruneError(f"--ratio is the share of channels to remove per group, in [0, 1) (got {ratio})")
    scores = importance_scores(job, graph, method, data, data_dir, seed=seed, samples=imp_samples)
    mask = mask_from_scores(graph, scores, ratio)
    mask.meta.update({"method": method, "ratio": ratio, "input_shape": list(job.example.shape)})
    if CHANNEL_IMPORTANCES.get(method).needs_data:
        mask.meta.update({"data": data, "imp_samples": imp_samples})
    return mask


@dataclass
class PruneOutcome:
    """An export and, when measured, the shipped artifact timed fresh against the dense one."""

    export: ExportReport
    baseline: Measurement | None  # the dense model, in the form the shipped artifact is timed in
    shipped: Measurement | None  # the shipped artifact: the ONNX file on onnxruntime, else the compacted model
    threads: int
    record: RunRecord
    backend: str = "ort-cpu"
    compacted: nn.Module | None = None  # the verified compacted model (what the ONNX file was exported from)
    graph: ChannelGraph | None = None
    mask: ChannelMask | None = None

    @property
    def ratio(self) -> tuple[float, float] | None:
        """Shipped / dense latency from paired rounds, and its standard error (None when not measured)."""
        return None if self.baseline is None else paired_ratio(self.baseline, self.shipped)

    def table(self) -> str:
        text = self.export.table()
        if self.baseline is not None:
            ratio, stderr = self.ratio
            what = "the shipped ONNX file" if self.backend.startswith("ort") else "the compacted model"
            text += (
                f"\n\n| {self.backend} latency of {what} ({self.threads} thread(s), batch {self.record.latency_batch}, "
                f"{self.shipped.samples} paired rounds) | dense | pruned | ratio |\n|---|---:|---:|---:|\n"
                f"| median ms (IQR) | {self.baseline.median_ms:.2f} ({self.baseline.iqr_ms:.2f}) | "
                f"{self.shipped.median_ms:.2f} ({self.shipped.iqr_ms:.2f}) | {ratio:.3f} +- {1.96 * stderr:.3f} |"
            )
        return text


def time_shipped(
    backend: str,
    graph: ChannelGraph,
    compacted: nn.Module,
    onnx_path: Path,
    example: torch.Tensor,
    exporter: str,
    threads: int = 1,
    repeats: int = 30,
    precision: float | None = 0.005,
) -> tuple[Measurement, Measurement]:
    """Time the artifact the user gets, fresh, against the dense model in the same form.

    onnxruntime backends time the very ONNX file written (against the dense model exported by the same
    exporter); torch, CUDA and XLA backends time the compacted module against the uncompacted one (both
    GraphModules). Rounds are added (to 10x ``repeats``) until the ratio's standard error is within
    ``precision``.
    """
    from hwprune.latency.profiler import baseline_for

    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        dense = baseline_for(graph, example, backend, Path(tmp), exporter)
        shipped = onnx_path if backend.startswith("ort") else compacted
        before, after = measure(
            backend,
            [dense, shipped],
            example,
            threads=threads,
            repeats=repeats,
            precision=precision,
            max_repeats=10 * repeats,
            exporter=exporter,
        )
    return before, after


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
    exporter: str = DEFAULT_EXPORTER,
    backend: str = "ort-cpu",
    precision: float | None = 0.005,
) -> PruneOutcome:
    """Compact and export with verification, time the shipped artifact against dense on ``backend``, log a row."""
    checks.timing(threads, repeats)
    check_writable(onnx_path)
    if results is not None:
        check_writable(results)
    compacted, report = export_pruned(job.model, graph, mask, job.example, onnx_path, exporter=exporter)
    before = after = None
    if measure_latency:
        before, after = time_shipped(
            backend, graph, compacted, Path(onnx_path), job.example, report.exporter, threads, repeats, precision
        )
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
        latency_backend=backend if measure_latency else None,
        latency_ms_median=after.median_ms if after else None,
        latency_ms_iqr=after.iqr_ms if after else None,
        latency_threads=threads if measure_latency else None,
        latency_batch=int(job.example.shape[0]),
        latency_before_ms=before.median_ms if before else None,
        artifacts=json.dumps({"onnx": str(onnx_path)}),
        extra=json.dumps(
            {
                "max_rel_diff": report.max_rel_diff,
                "onnx_max_rel_diff": report.onnx_max_rel_diff,
                "random_max_rel_diff": report.random_max_rel_diff,
                "onnx_random_max_rel_diff": report.onnx_random_max_rel_diff,
                "check_seed": report.check_seed,
                "exporter": report.exporter,
                "input_shape": list(job.example.shape),
                **({"shipped_ratio": paired_ratio(before, after)[0]} if before else {}),
            }
        ),
    )
    if results is not None:
        ResultsStore(results).append(record)
    return PruneOutcome(report, before, after, threads, record, backend, compacted, graph, mask)


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


def budget_verdict(ratio: float, stderr: float, target: float, tolerance: float) -> str:
    """``met``, ``missed`` or ``undecided``: undecided when the 95 % interval is wider than the tolerance."""
    if not math.isfinite(stderr) or 1.96 * stderr > tolerance * target:
        return "undecided"
    return "met" if abs(ratio / target - 1.0) <= tolerance else "missed"


@dataclass
class BudgetOutcome:
    """What a budget run decided, on which figure: for latency the shipped artifact timed afresh."""

    target_kind: str
    target: float
    predicted_ratio: float
    measured_ratio: float  # the deciding figure: shipped-file re-measurement (latency) or exact count
    status: str  # met / missed / undecided
    iterations: list[dict]
    outcome: PruneOutcome | None
    model_fit: str = ""  # the latency model's held-out check, for latency budgets
    loop_ratio: float | None = None  # the closed loop's own best measurement (selected, so biased)
    stderr: float = 0.0  # standard error of measured_ratio
    tolerance: float = 0.03

    @property
    def within_tolerance(self) -> bool:
        return self.status == "met"

    def headline(self) -> str:
        if self.target_kind != "latency":
            return (
                f"## {self.target_kind} budget {self.target:.3f}: ratio {self.measured_ratio:.3f} "
                f"(exact count) -> {self.status}"
            )
        return (
            f"## latency budget {self.target:.3f}: shipped artifact measured {self.measured_ratio:.3f} "
            f"+- {1.96 * self.stderr:.3f} (95 %), closed loop {self.loop_ratio:.3f}, predicted "
            f"{self.predicted_ratio:.3f} -> {self.status}"
        )

    def advice(self) -> str:
        """One line on a result that is not ``met``: what it means and what to do."""
        if self.status == "undecided":
            return (
                f"undecided: the measurement's 95 % interval (+-{1.96 * self.stderr:.3f}) is wider than the "
                f"tolerance (+-{self.tolerance * self.target:.3f}); rerun with more --repeats, fewer --threads, "
                "or on a quiet machine"
            )
        if self.status == "missed":
            return (
                f"missed: the shipped artifact measured {self.measured_ratio:.3f}, outside {self.target:.3f} "
                f"+- {self.tolerance:.0%}; see the iterations above (a looser --tolerance or another --round-to)"
            )
        return ""

    def table(self) -> str:
        lines = [self.headline(), ""]
        if self.advice():
            lines += [self.advice(), ""]
        lines += [
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
    imp_samples: int = IMPORTANCE_SAMPLES,
    exporter: str = DEFAULT_EXPORTER,
    finetune: int | Callable[[nn.Module], None] | None = None,
) -> BudgetOutcome:
    """Solve for a mask within a FLOPs/params/latency budget, close the loop on measurement, export.

    A latency budget is decided on the shipped artifact timed afresh against the dense model after the
    loop (the loop's own best measurement is selected among several, hence biased toward the target).
    ``data`` is a dataset name or the user's own iterable of (x, y) batches; ``finetune`` (default
    ``finetune_epochs``) is a number of epochs of the built-in trainer on it, or the user's ``fn(model)``.
    """
    from hwprune.latency.backends import require_available
    from hwprune.latency.lut import LUT
    from hwprune.latency.model import LatencyModel
    from hwprune.latency.profiler import baseline_for, profile_edges, profiled_groups
    from hwprune.prune.budget import CostFn, solve

    tune = finetune if finetune is not None else finetune_epochs
    checks.prune_settings(
        target_kind, target, threads, repeats, tolerance, round_to, tune if isinstance(tune, int) else 0
    )
    if isinstance(tune, int) and tune and data is None:
        raise HwpruneError("--finetune-epochs needs --data (digits works offline)")
    require_available(backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    if round_to is None:  # alignment buys speed: it matters to latency budgets, FLOPs/params are exact counts
        round_to = DEFAULT_ROUND_TO.get(backend, 1) if target_kind == "latency" else 1
    graph = job.graph()
    if target_kind != "latency":  # a count: an unreachable budget is refused before any work
        counted = CostFn.macs(graph) if target_kind == "flops" else CostFn.params(graph)
        checks.reachable_budget(graph, profiled_groups(graph, round_to), counted, target, target_kind, round_to)
    scores = importance_scores(job, graph, importance, data, data_dir, samples=imp_samples)
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
                exporter=exporter,
            )
            lut.save(lut_path)
        lut.check(
            model=job.name,
            fingerprint=graph.fingerprint(),
            input_shape=list(job.example.shape),
            backend=backend,
            threads=threads,
            **({"exporter": exporter} if backend.startswith("ort") else {}),
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

            dense = baseline_for(graph, job.example, backend, Path(tmp), exporter)

            def measured_ratio(sol):
                base, cand = measure(
                    backend,
                    [dense, compact_model(graph, sol.mask)],
                    job.example,
                    threads=threads,
                    repeats=repeats,
                    exporter=exporter,
                )
                return paired_ratio(base, cand)[0]
        else:

            def measured_ratio(sol):
                return sol.ratio  # exact: the cost formula is the count, and the budget a hard cap

        sol, loop_ratio, iterations = closed_loop(
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
        exporter=exporter,
        backend=backend,
        # a latency verdict needs the ratio's 95 % interval within half the tolerance (when the host allows)
        precision=tolerance * target / (2 * 1.96) if target_kind == "latency" else 0.005,
    )
    if target_kind == "latency":
        measured, stderr = outcome.ratio
        status = budget_verdict(measured, stderr, target, tolerance)
    else:
        measured, stderr = loop_ratio, 0.0
        status = "met" if measured <= target + 1e-9 else "missed"
    if tune:
        _finetune_and_reexport(job, outcome, data, data_dir, tune)
    outcome.record.target_kind = target_kind
    outcome.record.target_value = target
    outcome.record.extra = json.dumps(
        {
            **json.loads(outcome.record.extra),
            "predicted_ratio": predicted,
            "measured_ratio": measured,
            "measured_stderr": stderr,
            "loop_ratio": loop_ratio,
            "status": status,
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
        status,
        iterations,
        outcome,
        model_fit,
        loop_ratio if target_kind == "latency" else None,
        stderr,
        tolerance,
    )


def _finetune_and_reexport(job, outcome, data, data_dir, tune) -> None:
    """Fine-tune the verified compacted model in place, then export it again (checked in onnxruntime).

    ``tune`` is the user's ``fn(model)``, or epochs of the built-in trainer on ``data`` (a dataset name,
    whose test split measures accuracy, or the user's loader, which then measures it too).
    """
    from hwprune.export.pipeline import export_verified
    from hwprune.train import TrainConfig, evaluate, train

    compacted = outcome.compacted
    if callable(tune):
        tune(compacted)
        what = f"fine-tuned by {getattr(tune, '__name__', 'your function')}"
    else:
        if isinstance(data, str):
            from hwprune.data import get_dataset, make_loader

            size, channels = int(job.example.shape[-1]), int(job.example.shape[1])
            train_set = get_dataset(data, "train", data_dir=data_dir, image_size=size, channels=channels)
            test_set = get_dataset(data, "test", data_dir=data_dir, image_size=size, channels=channels)
            train_loader = make_loader(train_set, batch_size=64, shuffle=True, seed=0)
            test_loader = make_loader(test_set, batch_size=128, shuffle=False)
        else:
            train_loader = test_loader = data
        before = evaluate(compacted, test_loader, "cpu")
        result = train(compacted, train_loader, test_loader, TrainConfig(epochs=tune, lr=0.01, batch_size=64))
        outcome.record.accuracy_top1 = result.last_top1
        outcome.record.accuracy_top5 = result.last_top5
        source = data if isinstance(data, str) else "your data"
        what = f"fine-tuned {tune} epoch(s) on {source}: top-1 {before.top1:.3f} -> {result.last_top1:.3f}"
    compacted.eval()
    if outcome.export.onnx_path is None:
        outcome.export.notes.append(what)
        return
    _, diff = export_verified(compacted, job.example, outcome.export.onnx_path, outcome.export.exporter)
    outcome.export.notes.append(f"{what}; re-exported ONNX matches in onnxruntime ({diff:.1e})")
