"""Equivalence checks: the compacted model against the masked model, ONNX against the compacted."""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_TOLERANCE = 1e-4


def max_rel_diff(actual, reference) -> float:
    """max |actual - reference| / max |reference| over all outputs (0 when both are zero)."""
    pairs = list(zip(_flat(actual), _flat(reference), strict=True))
    worst = 0.0
    for a, r in pairs:
        a = np.asarray(a.detach().cpu() if isinstance(a, torch.Tensor) else a, dtype=np.float64)
        r = np.asarray(r.detach().cpu() if isinstance(r, torch.Tensor) else r, dtype=np.float64)
        if a.shape != r.shape:
            return float("inf")
        scale = float(np.abs(r).max(initial=0.0))
        diff = float(np.abs(a - r).max(initial=0.0))
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _flat(x):
    if isinstance(x, (list, tuple)):
        for v in x:
            yield from _flat(v)
    elif isinstance(x, dict):
        for v in x.values():
            yield from _flat(v)
    else:
        yield x
