"""A gating run shipped: compacted with proof, verified ONNX, timed afresh, one results row with its settings.

Reuses the export path of every other method (:func:`hwprune.workflow.ship.prune_export_measure`); the
model is mapped again at the export input (the mask's structure fingerprint must match, which it
does for any input size the model accepts), and the row gains the dataset, accuracy and gating
settings.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from hwprune.graph_mapper import build_channel_graph
from hwprune.latency.backends import DEFAULT_BACKEND
from hwprune.prune.gating.run import GateResult
from hwprune.results import ResultsStore
from hwprune.workflow.inputs import ModelInput
from hwprune.workflow.ship import PruneOutcome, prune_export_measure

TARGET_KINDS = {"flop_factor": "flops", "memory_factor": "params"}


def target_kind(result: GateResult) -> str:
    """What the target bounds: flops, params, or latency when the multipliers came from a LUT."""
    if result.multiplier_source.startswith("lut:"):
        return "latency"
    return TARGET_KINDS[result.config.factor_type]


def default_method(result: GateResult) -> str:
    """The results row's method: gator-flops, gator-params or gator-latency."""
    return f"gator-{target_kind(result)}"


def ship_gated(
    result: GateResult,
    example: torch.Tensor,
    onnx_path: str | Path,
    method: str,
    dataset: str,
    *,
    name: str | None = None,
    threads: int = 1,
    repeats: int = 30,
    results: str | Path | None = None,
    measure_latency: bool = True,
    backend: str = DEFAULT_BACKEND,
    seed: int | None = None,
) -> PruneOutcome:
    """Export ``result``'s converted model at ``example`` (verified), time it against dense, log a row."""
    net = result.gated.net.cpu().eval()
    name = name or result.mask.model
    graph = build_channel_graph(net, example, name)
    outcome = prune_export_measure(
        ModelInput(name, net, example),
        result.mask,
        graph,
        Path(onnx_path),
        method,
        threads=threads,
        repeats=repeats,
        results=None,
        measure_latency=measure_latency,
        backend=backend,
    )
    extra = {**json.loads(outcome.record.extra or "{}"), "gating": result.settings()}
    outcome.record = dataclasses.replace(
        outcome.record,
        dataset=dataset,
        target_kind=target_kind(result) if result.config.target is not None else "none",
        target_value=result.config.target,
        seed=seed,
        extra=json.dumps(extra, default=float),
        **result.train.record_fields(),
    )
    if results is not None:
        ResultsStore(results).append(outcome.record)
    return outcome
