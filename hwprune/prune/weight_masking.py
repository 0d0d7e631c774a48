"""Scores -> unstructured :class:`WeightMask`: exact-count thresholding, schedules, layer collapse.

Counting rule: a mask at density ``d`` over ``N`` weights keeps exactly ``round(d·N)`` of them
(round half up), the highest-scoring ones; ties at the threshold are broken by position (the earlier
weight in model order, then in row-major order, is kept), so the result is deterministic. ``global``
scope applies that count to all scored tensors together, ``local`` to each tensor on its own.

Compression is named explicitly, never guessed: ``ratio`` x means density 1/x (10 -> 10 %),
``exponent`` x means density 10^-x (Synaptic-Flow's ``--compression``; 1 -> 10 %).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.prune.masks import WeightMask
from hwprune.prune.scorers import Batches, LossFn, score_weights

log = logging.getLogger(__name__)

COMPRESSION_MODES = ("ratio", "exponent")
SCHEDULES = ("exponential", "linear")
SCOPES = ("global", "local")
DEFAULT_ROUNDS = {"synflow": 100}


def density_from(compression: float, mode: str) -> float:
    """Density (fraction kept) for a compression given in ``mode``: ``ratio`` (1/x) or ``exponent`` (10^-x)."""
    if mode == "ratio":
        if not compression >= 1:
            raise HwpruneError(f"a compression ratio must be >= 1 (10 keeps 10 %), got {compression}")
        return 1.0 / compression
    if mode == "exponent":
        if not compression >= 0:
            raise HwpruneError(f"a compression exponent must be >= 0 (1 keeps 10 %), got {compression}")
        return 10.0 ** (-compression)
    raise HwpruneError(f"unknown compression mode {mode!r}: use one of {', '.join(COMPRESSION_MODES)}")


def keep_count(total: int, density: float) -> int:
    """Weights kept out of ``total`` at ``density``: round(d·N), half up, within [0, N]."""
    if not 0.0 <= density <= 1.0:
        raise HwpruneError(f"density must be within [0, 1], got {density}")
    return int(min(total, max(0, math.floor(density * total + 0.5))))


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean keep vector of the ``k`` highest entries of flat ``scores``; earlier index wins ties; NaN lowest."""
    flat = np.asarray(scores, dtype=np.float64).reshape(-1)
    flat = np.where(np.isnan(flat), -np.inf, flat)
    n = flat.size
    if k <= 0:
        return np.zeros(n, dtype=bool)
    if k >= n:
        return np.ones(n, dtype=bool)
    threshold = np.partition(flat, n - k)[n - k]  # the k-th largest value
    keep = flat > threshold
    ties = np.flatnonzero(flat == threshold)[: k - int(keep.sum())]
    keep[ties] = True
    return keep


def _as_numpy(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().to("cpu", torch.float64).numpy()
    return np.asarray(t, dtype=np.float64)


def mask_from_scores(
    scores: dict[str, torch.Tensor | np.ndarray],
    density: float,
    *,
    scope: str = "global",
    pruned: WeightMask | None = None,
    model: str = "",
) -> WeightMask:
    """Keep the top ``round(d·N)`` scores, over all tensors (``global``) or per tensor (``local``).

    Args:
        scores: ``{tensor name: score}``, higher = more important.
        density: Fraction to keep.
        scope: ``global`` or ``local``.
        pruned: Weights already removed (``keep`` False here) are ranked below every score, so they stay
            removed as long as the count allows (iterative pruning never regrows).
        model: Model name recorded in the mask.

    Returns:
        The mask, with ``meta`` holding density, scope and kept count.
    """
    if scope not in SCOPES:
        raise HwpruneError(f"unknown masking scope {scope!r}: use one of {', '.join(SCOPES)}")
    arrays = {n: _as_numpy(s) for n, s in scores.items()}
    if pruned is not None:
        for n, a in arrays.items():
            if n in pruned.keep:
                arrays[n] = np.where(pruned.keep[n], a, -np.inf)
    keep: dict[str, np.ndarray] = {}
    if scope == "global":
        flat = np.concatenate([a.reshape(-1) for a in arrays.values()]) if arrays else np.zeros(0)
        k = keep_count(flat.size, density)
        kept = top_k(flat, k)
        start = 0
        for n, a in arrays.items():
            keep[n] = kept[start : start + a.size].reshape(a.shape)
            start += a.size
    else:
        for n, a in arrays.items():
            keep[n] = top_k(a, keep_count(a.size, density)).reshape(a.shape)
    mask = WeightMask(keep, model=model)
    mask.meta.update({"density": density, "scope": scope, "kept": int(sum(int(k.sum()) for k in keep.values()))})
    return mask


def schedule_densities(density: float, rounds: int, schedule: str = "exponential") -> list[float]:
    """Target density after each of ``rounds`` rounds; the last is ``density``.

    ``exponential``: d^(k/n) (Synaptic-Flow); ``linear``: 1 - (1 - d)·k/n.
    """
    if rounds < 1:
        raise HwpruneError(f"rounds must be >= 1, got {rounds}")
    if schedule == "exponential":
        return [density ** (k / rounds) for k in range(1, rounds + 1)]
    if schedule == "linear":
        return [1.0 - (1.0 - density) * k / rounds for k in range(1, rounds + 1)]
    raise HwpruneError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")


def prune_weights(
    model: nn.Module,
    method: str | Callable[..., dict[str, torch.Tensor]],
    batches: Batches | None,
    density: float,
    *,
    scope: str = "global",
    rounds: int | None = None,
    schedule: str = "exponential",
    loss_fn: LossFn = F.cross_entropy,
    model_name: str = "",
    **options,
) -> WeightMask:
    """Score and mask ``model`` at ``density``, single-shot or iteratively.

    Each round k of ``rounds`` scores the model with the current mask applied (removed weights zero),
    then keeps round(d_k·N) by ``schedule``; weights removed in earlier rounds stay removed. The model's
    weights are restored afterwards (the mask is returned, not applied).

    Args:
        model: The model to score.
        method: A registered scorer name (see ``WEIGHT_SCORERS``) or a scorer function.
        batches: The pruning set, a list of ``(x, y)``; may be None for data-free scorers.
        density: Final fraction of the scored weights to keep.
        scope: ``global`` or ``local`` thresholding.
        rounds: Rounds of pruning; default 100 for synflow, 1 otherwise.
        schedule: ``exponential`` or ``linear`` density schedule over the rounds.
        loss_fn: Loss for the data-based scorers.
        model_name: Recorded in the mask.
        **options: Scorer options (``dense_classifier``, ``prune_bias``, ``seed``, gcs modes ...).

    Returns:
        The mask; ``meta`` records method, density, scope, rounds, schedule and collapsed layers.
    """
    name = method if isinstance(method, str) else getattr(method, "__name__", "custom")
    if rounds is None:
        rounds = DEFAULT_ROUNDS.get(name, 1) if isinstance(method, str) else 1
    targets = schedule_densities(density, rounds, schedule)

    def score() -> dict[str, torch.Tensor]:
        if isinstance(method, str):
            return score_weights(method, model, batches, loss_fn=loss_fn, **options)
        return method(model, batches, loss_fn=loss_fn, **options)

    mask: WeightMask | None = None
    tensors = dict(model.named_parameters())
    saved: dict[str, torch.Tensor] = {}
    try:
        for target in targets:
            if mask is not None:
                for n in mask.keep:
                    saved.setdefault(n, tensors[n].detach().clone())
                mask.apply(model)
            mask = mask_from_scores(score(), target, scope=scope, pruned=mask, model=model_name)
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                tensors[n].copy_(t)
    assert mask is not None
    collapsed = detect_collapse(mask)
    if collapsed:
        log.warning("layer collapse: %s keep no weight at density %.3g", ", ".join(collapsed), density)
    mask.meta.update(
        {
            "method": name,
            "density": density,
            "rounds": rounds,
            "schedule": schedule,
            "collapsed": collapsed,
            "options": {k: v for k, v in options.items() if _jsonable(v)},
        }
    )
    return mask


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def detect_collapse(mask: WeightMask) -> list[str]:
    """Names of the tensors that keep no weight (biases excluded).

    A prunable layer with zero kept weights cuts every path from input to output through it, so one such
    tensor is enough for the network to have collapsed.
    """
    return [n for n, k in mask.keep.items() if k.size and not k.any() and not n.endswith("bias")]


def layer_densities(mask: WeightMask) -> list[dict]:
    """Per tensor: ``name``, ``kept``, ``total``, ``density``, in mask order."""
    rows = []
    for n, k in mask.keep.items():
        kept, total = int(k.sum()), int(k.size)
        rows.append({"name": n, "kept": kept, "total": total, "density": kept / total if total else 1.0})
    return rows


def format_density_report(mask: WeightMask) -> str:
    """A plain-text table of :func:`layer_densities` with a total row; collapsed layers are marked."""
    rows = layer_densities(mask)
    width = max([len(r["name"]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'kept':>10}  {'total':>10}  {'density':>8}"]
    for r in rows:
        flag = "  COLLAPSED" if r["kept"] == 0 and not r["name"].endswith("bias") else ""
        lines.append(f"{r['name']:<{width}}  {r['kept']:>10}  {r['total']:>10}  {r['density']:>8.4f}{flag}")
    kept, total = sum(r["kept"] for r in rows), sum(r["total"] for r in rows)
    lines.append(f"{'total':<{width}}  {kept:>10}  {total:>10}  {kept / total if total else 1.0:>8.4f}")
    return "\n".join(lines)
