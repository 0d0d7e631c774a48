"""The public Python API: your module, your weights, your data; the CLI is a thin layer over the same jobs.

    import hwprune
    model.load_state_dict(torch.load("my.pt", weights_only=True))
    result = hwprune.prune(model, torch.randn(1, 3, 224, 224), latency=0.5, out="out/mine")
    result.save_onnx("mine_pruned.onnx")   # verified against the compacted model in onnxruntime
    result.model                           # the compacted nn.Module, ready to train further

Every call works on any traceable ``nn.Module`` (your own class included) with the weights it holds;
``map``, ``prune`` and ``export_onnx`` also take the path of an ONNX file instead (pruned, compacted, verified
and timed as ONNX). Nothing is downloaded and the module or file you pass is never modified.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.export.onnx_export import DEFAULT_EXPORTER
from hwprune.export.pipeline import ExportReport, export_pruned
from hwprune.graph_mapper import ChannelGraph, build_channel_graph
from hwprune.latency.backends import DEFAULT_BACKEND, require_available
from hwprune.latency.lut import LUT
from hwprune.latency.measurement import SESSIONS, Measurement
from hwprune.prune.masks import ChannelMask
from hwprune.workflow import IMPORTANCE_SAMPLES, BudgetOutcome, ModelInput, OnnxInput, prune_to_budget
from hwprune.workflow.evaluation import Evaluation
from hwprune.workflow.recovery import BN_SAMPLES

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


def _example(example_inputs) -> torch.Tensor:
    """The one input tensor hwprune traces and times with (a tensor, or a 1-tuple holding one)."""
    if isinstance(example_inputs, (tuple, list)) and len(example_inputs) == 1:
        example_inputs = example_inputs[0]
    if not isinstance(example_inputs, torch.Tensor):
        raise HwpruneError(
            f"example_inputs must be one input tensor, e.g. torch.randn(1, 3, 224, 224) (got "
            f"{type(example_inputs).__name__}); models with several inputs are not supported yet"
        )
    return example_inputs


def _job(model: nn.Module, example_inputs, name: str | None) -> ModelInput:
    if not isinstance(model, nn.Module):
        raise HwpruneError(f"model must be a torch.nn.Module (got {type(model).__name__})")
    return ModelInput(name or type(model).__name__, model.eval(), _example(example_inputs))


def _input(
    model_or_onnx: nn.Module | str | Path, example_inputs, name: str | None, front_end: str = "auto"
) -> ModelInput | OnnxInput:
    """A module with its example input, or an ONNX file (at the example's shape when one is given)."""
    from hwprune import checks

    checks.front_end(front_end)
    if not isinstance(model_or_onnx, (str, Path)):
        return replace(_job(model_or_onnx, example_inputs, name), front_end=front_end)
    if front_end != "auto":
        raise HwpruneError(f"front_end={front_end!r} is for a PyTorch module; an ONNX file maps through its own graph")

    path = Path(model_or_onnx)
    shape = None if example_inputs is None else tuple(_example(example_inputs).shape)
    checks.onnx_file(path, shape is not None, "model")
    return OnnxInput.build(path, shape)


def map(  # noqa: A001
    model: nn.Module | str | Path, example_inputs=None, name: str | None = None, front_end: str = "auto"
) -> ChannelGraph:
    """The channel groups of ``model``: which tensors must lose the same channels, what is frozen and why.

    ``model`` is a module (with its example input) or an ONNX file's path. ``print(graph.summary())`` or
    ``graph.explain()`` shows the groups. ``front_end`` captures a module with ``"fx"`` (symbolic tracing),
    ``"export"`` (torch.export: the compacted model is your own module) or ``"auto"`` (fx, else export).
    """
    return _input(model, example_inputs, name, front_end).graph()


@dataclass
class PruneResult:
    """A pruned model and the evidence for it.

    ``model`` is the compacted module (channels physically removed, equal to the masked model on your
    weights and on randomised ones; None when an ONNX file was pruned), ``mask`` the channels kept,
    ``report`` the budget's outcome: before and after params/FLOPs, measured latency of the shipped artifact,
    predicted vs measured, the equivalence figures. ``onnx_path`` is the verified ONNX file written to
    ``out`` (None without ``out``); ``source`` the ONNX file pruned (None for a module).
    """

    model: nn.Module | None
    mask: ChannelMask
    graph: ChannelGraph
    report: BudgetOutcome
    example: torch.Tensor
    onnx_path: Path | None = None
    source: Path | None = None

    @property
    def export(self) -> ExportReport:
        return self.report.outcome.export

    @property
    def met(self) -> bool:
        """True when the budget was met (latency: on the shipped artifact, measured afresh)."""
        return self.report.within_tolerance

    def save_onnx(self, path: str | Path, exporter: str = DEFAULT_EXPORTER) -> ExportReport:
        """Write ``model`` as ONNX (folders created), verified in onnxruntime against it; nothing written on failure.

        A pruned ONNX file is written again from its source, checked again against the masked file.
        """
        from hwprune.export.pipeline import export_checked
        from hwprune.files import check_writable

        Path(path).parent.mkdir(parents=True, exist_ok=True)
        path = check_writable(path)
        if self.source is not None:
            from hwprune.export.onnx_compact import prune_onnx_file

            return prune_onnx_file(self.source, self.mask, path, graph=self.graph)
        check = export_checked(self.model, self.example, path, exporter)
        return dataclasses.replace(
            self.export,
            onnx_path=str(path),
            onnx_max_rel_diff=check.diff,
            exporter=check.exporter,
            onnx_input_shape=check.input_shape,
            onnx_second_shape=check.second_shape,
            onnx_second_max_rel_diff=check.second_diff,
            notes=self.export.notes + [n for n in check.notes if n not in self.export.notes],
        )

    def __str__(self) -> str:
        return self.report.table()


def prune(
    model: nn.Module | str | Path,
    example_inputs=None,
    *,
    latency: float | None = None,
    flops: float | None = None,
    params: float | None = None,
    backend: str = DEFAULT_BACKEND,
    importance: str = "l1",
    data: Batches | None = None,
    imp_samples: int = IMPORTANCE_SAMPLES,
    finetune: int | Callable[[nn.Module], None] | None = None,
    bn_samples: int = BN_SAMPLES,
    distill: float = 0.0,
    distill_temperature: float = 4.0,
    lut: str | Path | None = None,
    round_to: int | None = None,
    tolerance: float = 0.03,
    threads: int = 1,
    repeats: int = 30,
    sessions: int = SESSIONS,
    out: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
    normalise: str = "cost",
    front_end: str = "auto",
) -> PruneResult:
    """Prune ``model`` to one budget, a ratio of the dense model: ``latency``, ``flops`` or ``params``.

    Latency is predicted from an edge profile on ``backend`` (or the given ``lut``), then measured and
    corrected until within ``tolerance``; the shipped artifact is timed afresh and decides (``result.met``).
    Each latency ratio is the mean over ``sessions`` fresh session pairs timed in one interleaved run.
    ``data`` is your DataLoader (or any iterable of (x, y) batches): gradient-based importances
    (``taylor``, ``fisher``, ...) average over ``imp_samples`` of it, and ``finetune`` (a number of epochs
    of the built-in trainer on ``data``, or your own ``fn(model)``) trains the compacted model afterwards, after
    BatchNorm statistics are re-estimated on ``bn_samples`` examples of ``data`` (0: keep the dense ones);
    ``distill`` > 0 adds ``distill`` x the soft-target loss against the dense model to the built-in fine-tuning.
    ``normalise`` is how importance is compared across groups: ``cost`` (each group's total = its share of the
    budgeted cost; kept the most accuracy in benchmarks/results/pareto.md), ``mean`` (each group's mean = 1) or
    ``none`` (raw scores). Channel counts are multiples of ``round_to`` (default: the backend's alignment; for
    FLOPs/params budgets halved in small groups so each can shrink).
    ``out`` keeps mask.json, the LUT and the verified ONNX file; without it they live in a temporary folder.
    ``model`` may be an ONNX file's path (``example_inputs`` then optional: it fixes the input shape); it is
    pruned, timed and shipped as ONNX on an onnxruntime backend, with weight-based importances.
    ``front_end`` is how a module is captured (see :func:`map`).
    """
    budgets = {k: v for k, v in (("latency", latency), ("flops", flops), ("params", params)) if v is not None}
    if len(budgets) != 1:
        raise HwpruneError("give exactly one budget: latency=, flops= or params= (a ratio of the dense model)")
    [(kind, target)] = budgets.items()
    if isinstance(finetune, int) and finetune and data is None:
        raise HwpruneError("finetune=<epochs> trains on data=: pass your DataLoader (or give finetune=your_fn)")
    job = _input(model, example_inputs, name, front_end)
    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        report = prune_to_budget(
            job,
            kind,
            target,
            folder,
            backend=backend,
            lut_path=Path(lut) if lut is not None else None,
            importance=importance,
            threads=threads,
            repeats=repeats,
            sessions=sessions,
            tolerance=tolerance,
            progress=progress,
            round_to=round_to,
            data=data,
            finetune=finetune,
            imp_samples=imp_samples,
            bn_samples=bn_samples,
            distill=distill,
            distill_temperature=distill_temperature,
            normalise=normalise,
        )
    outcome = report.outcome
    return PruneResult(
        outcome.compacted,
        ChannelMask.load(folder / "mask.json") if out is not None else outcome.mask,
        outcome.graph,
        report,
        job.example,
        Path(outcome.export.onnx_path) if out is not None else None,
        job.path if isinstance(job, OnnxInput) else None,
    )


def profile(
    model: nn.Module,
    example_inputs,
    *,
    backend: str = DEFAULT_BACKEND,
    points: tuple[float, ...] = (0.25, 0.5, 0.75),
    threads: int = 1,
    repeats: int = 20,
    round_to: int | None = None,
    journal: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
) -> LUT:
    """Edge profile of ``model`` on ``backend``: the whole network timed with each group shrunk (a LUT).

    ``journal`` makes an interrupted profile resume; ``lut.save(path)`` writes it for ``prune(lut=...)``.
    """
    from hwprune.latency.profiler import profile_edges

    job = _job(model, example_inputs, name)
    graph = build_channel_graph(job.model, job.example, job.name)
    return profile_edges(
        job.model,
        graph,
        job.example,
        backend,
        points=points,
        threads=threads,
        repeats=repeats,
        journal=journal,
        progress=progress,
        round_to=round_to if round_to is not None else require_available(backend).round_to,
    )


def export_onnx(
    model: nn.Module | str | Path,
    mask: ChannelMask,
    example_inputs,
    path: str | Path,
    exporter: str = DEFAULT_EXPORTER,
) -> tuple[nn.Module | None, ExportReport]:
    """Compact ``model`` with ``mask``, prove it equal to the masked model, write verified ONNX to ``path``.

    Returns the compacted module and the report (params, FLOPs, equivalence figures). ``model`` may be an
    ONNX file's path: the file itself is compacted and checked in onnxruntime (no module: None).
    """
    job = _input(model, example_inputs, mask.model or None)
    if isinstance(job, OnnxInput):
        from hwprune.export.onnx_compact import prune_onnx_file

        return None, prune_onnx_file(job.path, mask, path, graph=job.graph())
    graph = build_channel_graph(job.model, job.example, mask.model or job.name)
    return export_pruned(job.model, graph, mask, job.example, path, exporter=exporter)


def measure(
    model_or_onnx: nn.Module | str | Path,
    example_inputs,
    *,
    backend: str = DEFAULT_BACKEND,
    threads: int = 1,
    repeats: int = 30,
) -> Measurement:
    """Latency of one module or ONNX file on ``backend`` (median, IQR, rounds, versions)."""
    from hwprune.latency import measure as measure_all

    target = Path(model_or_onnx) if isinstance(model_or_onnx, (str, Path)) else model_or_onnx
    if isinstance(target, Path) and not target.is_file():
        raise HwpruneError(f"ONNX file {target} not found: give an existing .onnx path or an nn.Module")
    [m] = measure_all(backend, [target], _example(example_inputs), threads=threads, repeats=repeats)
    return m


def evaluate(
    model: nn.Module | str | Path,
    data,
    *,
    example_inputs=None,
    mask: ChannelMask | None = None,
    weights: str | Path | None = None,
    threads: int = 1,
    name: str | None = None,
) -> Evaluation:
    """Top-1/top-5 accuracy, params, FLOPs and compression of ``model`` on ``data``.

    ``data`` is a DataLoader (or iterable of (x, y) batches), or a dict of them by split name. With ``mask``
    the model is compacted first (what runs is what ships); ``weights`` (a file) are then loaded where their
    shapes fit: the dense model (before the mask) or the pruned one (a fine-tuned compacted model's
    state dict). ``model`` may be an ONNX file's path: it is run in onnxruntime, as deployed.
    """
    from hwprune.models.weights import apply_state, read_state
    from hwprune.workflow.evaluation import evaluate_onnx, evaluate_pruned

    loaders = data if isinstance(data, dict) else {"test": data}
    if isinstance(model, (str, Path)):
        if mask is not None or weights is not None:
            raise HwpruneError("an ONNX file is evaluated as it is: mask= and weights= are for a module")
        job = _input(model, example_inputs, name)
        shape = tuple(job.example.shape) if example_inputs is not None else None
        return evaluate_onnx(job.path, loaders, threads, shape)
    job = _job(model, example_inputs, name)
    pruned_state = None
    if weights is not None:
        state = read_state(Path(weights))
        dense_shapes = {k: tuple(v.shape) for k, v in job.model.state_dict().items()}
        if mask is None or all(dense_shapes.get(k) == tuple(v.shape) for k, v in state.items()):
            apply_state(job.model, state, f"weights file {weights}")
        else:
            pruned_state = state
    return evaluate_pruned(job.model, job.example, loaders, mask, pruned_state, job.name)


def prune_train(
    model: nn.Module,
    example_inputs,
    train_data,
    test_data=None,
    *,
    out: str | Path | None = None,
    name: str | None = None,
    results: str | Path | None = None,
    dataset: str = "custom",
    **options,
):
    """Prune+train rounds on your model and data (options: :class:`~hwprune.workflow.prune_train.PruneTrainConfig`).

    ``train_data`` / ``test_data`` are DataLoaders (or iterables of (x, y)). With ``out`` each round is
    checkpointed there (a rerun resumes) and the result is written as verified ONNX; ``results`` appends a row.
    Returns a ``PruneTrainResult``: ``.model`` (compacted, trained), ``.mask``, ``.rounds``, ``.stats``.
    """
    from hwprune.workflow.prune_train import PruneTrainConfig, ship_prune_train
    from hwprune.workflow.prune_train import prune_train as run

    job = _job(model, example_inputs, name)
    try:
        config = PruneTrainConfig(**options)
    except TypeError as exc:
        raise HwpruneError(f"prune_train: {exc} (options: see PruneTrainConfig)") from None
    result = run(job.model, job.example, train_data, test_data, config, out, job.name)
    return ship_prune_train(result, job.model, job.example, Path(out) if out else None, job.name, results, dataset)
