"""How well does a LUT-based latency model predict real masks? Measure random ones and compare."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from hwprune.graph_mapper.types import ChannelGraph
from hwprune.latency.lut import LUT
from hwprune.latency.model import LatencyModel
from hwprune.latency.profiler import baseline_for, random_mask, time_mask


@dataclass
class Validation:
    predicted_ms: list[float]
    measured_ms: list[float]
    baseline_ms: float

    @property
    def errors_pct(self) -> np.ndarray:
        p, m = np.asarray(self.predicted_ms), np.asarray(self.measured_ms)
        return (p - m) / m * 100.0

    def summary(self) -> dict:
        e = np.abs(self.errors_pct)
        return {
            "n_masks": int(e.size),
            "within_5pct": float((e <= 5).mean()),
            "within_10pct": float((e <= 10).mean()),
            "median_abs_err_pct": float(np.median(e)),
        }


def validate(
    model: nn.Module,
    graph: ChannelGraph,
    example: torch.Tensor,
    lut: LUT,
    backend: str,
    n_masks: int = 30,
    threads: int = 1,
    repeats: int = 20,
    seed: int = 1,  # the profile's calibration masks use seed 0: validate on other masks
    progress: bool = True,
) -> Validation:
    """Measure ``n_masks`` random masks (aligned to the LUT's round_to) and compare with predictions."""
    latency = LatencyModel(lut, graph)
    round_to = int(lut.meta.get("round_to", 1))
    exporter = lut.meta.get("exporter") or "torchscript"  # LUTs from before the exporter was recorded used it
    rng = np.random.default_rng(seed)
    predicted, measured, baselines = [], [], []
    with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
        baseline = baseline_for(graph, example, backend, Path(tmp), exporter)
        for _ in tqdm(range(n_masks), desc="validating latency model", disable=not progress):
            mask = random_mask(graph, rng, round_to=round_to)
            shares = {g: float(k.mean()) for g, k in mask.keep.items()}
            base, _, latency_ms = time_mask(graph, mask, baseline, backend, example, threads, repeats, exporter)
            # the model's prediction, rescaled to this measurement's baseline (drift between runs cancels)
            predicted.append(latency.predict(shares) / latency.baseline_ms * base.median_ms)
            measured.append(latency_ms)
            baselines.append(base.median_ms)
    return Validation(predicted, measured, float(np.median(baselines)))
