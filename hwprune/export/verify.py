"""Equivalence checks: the compacted model against the masked model, ONNX against the compacted."""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_TOLERANCE = 1e-4


def max_rel_diff(actual, reference) -> float:
    """Max |actual - reference| / max |reference| over all outputs (0 when both are zero)."""
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


def randomize_for_check(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and norm statistic random, well-scaled values (in place).

    Fresh torchvision models are often degenerate for an equivalence check (ViT's zero-initialised
    head outputs zeros whatever the body computes); this makes every channel matter.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                fan_in = p[0].numel() if p.shape[0] else 1
                p.copy_(torch.randn(p.shape, generator=gen) / max(fan_in, 1) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model
