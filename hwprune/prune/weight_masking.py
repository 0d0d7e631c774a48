"""Scores -> unstructured :class:`WeightMask`: thresholding, schedules, layer collapse.

Two selection rules (``rule``):

* ``exact`` (the default of :func:`mask_from_scores` and :func:`prune_weights`): a mask at density
  ``d`` over ``N`` weights keeps exactly ``round(d·N)`` of them (round half up), the highest-scoring
  ones; ties at the threshold are broken by position (the earlier weight in model order, then in
  row-major order, is kept), so the result is deterministic.
* ``reference`` (Synaptic-Flow's ``Pruner.mask``; the prune-at-init sweep's default): the threshold is
  the ``k``-th smallest score, ``k = int((1 - d)·N)``, and every weight scoring at or below it is
  removed, so ties at the threshold are all removed and at least ``k`` weights go; when ``k < 1``
  nothing new is removed. The threshold is taken over every score as it is, weights removed in an
  earlier round included, and those stay removed. A removed (zeroed) weight scores 0 under SynFlow,
  SNIP and Mag, at or below any threshold of non-negative scores, so the reference keeps it removed
  too and iterative pruning gives the reference's mask round for round; only a signed scorer (GraSP)
  could see the reference regrow a weight, which this rule never does.

``global`` scope applies the rule to all scored tensors together, ``local`` to each tensor on its own.
Selection runs in torch on the scores' own dtype (float64 SynFlow scores stay float64, nothing is
copied to numpy), with ``torch.kthvalue`` for the threshold as in the reference.

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
RULES = ("exact", "reference")
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


def reference_prune_count(total: int, density: float) -> int:
    """Weights the reference removes at ``density``: ``int((1 - d)·N)`` (truncated), before ties."""
    if not 0.0 <= density <= 1.0:
        raise HwpruneError(f"density must be within [0, 1], got {density}")
    return int((1.0 - density) * total)


def _keep_top(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean keep vector of the ``k`` highest entries of 1-d ``flat`` (no NaN); earlier index wins ties."""
    n = flat.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    threshold = torch.kthvalue(flat, n - k + 1).values  # the k-th largest value
    keep = flat > threshold
    need = k - int(keep.sum())
    if need > 0:
        keep[torch.nonzero(flat == threshold).flatten()[:need]] = True
    return keep


def _keep_reference(flat: torch.Tensor, density: float) -> torch.Tensor:
    """Synaptic-Flow's rule on 1-d ``flat`` (no NaN): keep the scores above the ``int((1-d)·N)``-th smallest."""
    n = flat.numel()
    k = reference_prune_count(n, density)
    if k < 1:  # the reference leaves the mask as it is
        return torch.ones(n, dtype=torch.bool, device=flat.device)
    return flat > torch.kthvalue(flat, k).values


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean keep vector of the ``k`` highest entries of flat ``scores``; earlier index wins ties; NaN lowest."""
    flat = _as_tensor(scores).reshape(-1)
    return _keep_top(_nan_lowest(flat), k).numpy()


def _as_tensor(t) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach()
    a = np.ascontiguousarray(t)
    return torch.as_tensor(a if a.dtype.kind == "f" else a.astype(np.float64))


def _nan_lowest(t: torch.Tensor) -> torch.Tensor:
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.numel() == 0 or not bool(torch.isnan(t.amax())):  # max propagates NaN: one pass, no copy
        return t
    return torch.where(torch.isnan(t), torch.tensor(-math.inf, dtype=t.dtype, device=t.device), t)


def mask_from_scores(
    scores: dict[str, torch.Tensor | np.ndarray],
    density: float,
    *,
    scope: str = "global",
    pruned: WeightMask | None = None,
    model: str = "",
    rule: str = "exact",
) -> WeightMask:
    """Keep the top scores at ``density``, over all tensors (``global``) or per tensor (``local``).

    Args:
        scores: ``{tensor name: score}``, higher = more important (torch tensors or numpy arrays; NaN
            ranks lowest).
        density: Fraction to keep.
        scope: ``global`` or ``local``.
        pruned: Weights already removed (``keep`` False here) stay removed (iterative pruning never
            regrows): ranked below every score with the ``exact`` rule; with the ``reference`` rule the
            threshold is computed over all scores as they are (see the module doc).
        model: Model name recorded in the mask.
        rule: ``exact`` (keep ``round(d·N)``, ties by position) or ``reference`` (Synaptic-Flow: remove
            the ``int((1-d)·N)`` lowest and every tie of the threshold).

    Returns:
        The mask, with ``meta`` holding density, scope, rule and kept count.
    """
    if scope not in SCOPES:
        raise HwpruneError(f"unknown masking scope {scope!r}: use one of {', '.join(SCOPES)}")
    if rule not in RULES:
        raise HwpruneError(f"unknown masking rule {rule!r}: use one of {', '.join(RULES)}")
    if not 0.0 <= density <= 1.0:
        raise HwpruneError(f"density must be within [0, 1], got {density}")
    tensors = {n: _as_tensor(s) for n, s in scores.items()}
    device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    previous: dict[str, torch.Tensor] = {}
    if pruned is not None:
        previous = {
            n: torch.as_tensor(pruned.keep[n], dtype=torch.bool, device=device).reshape(t.shape)
            for n, t in tensors.items()
            if n in pruned.keep
        }

    def select(flats: dict[str, torch.Tensor]) -> torch.Tensor:
        dtype = torch.float64
        if flats:
            dtype = flats[next(iter(flats))].dtype
            for t in flats.values():
                dtype = torch.promote_types(dtype, t.dtype)
            if not dtype.is_floating_point:
                dtype = torch.float64
        flat = _nan_lowest(
            torch.cat([t.to(device=device, dtype=dtype).reshape(-1) for t in flats.values()])
            if flats
            else torch.zeros(0, dtype=dtype)
        )
        before = None
        if previous and any(n in previous for n in flats):
            before = torch.cat(
                [
                    previous[n].reshape(-1) if n in previous else torch.ones(t.numel(), dtype=torch.bool, device=device)
                    for n, t in flats.items()
                ]
            )
        if rule == "exact":
            if before is not None:
                flat = torch.where(before, flat, torch.tensor(-math.inf, dtype=dtype, device=device))
            return _keep_top(flat, keep_count(flat.numel(), density))
        keep = _keep_reference(flat, density)
        return keep & before if before is not None else keep

    keep: dict[str, np.ndarray] = {}
    if scope == "global":
        kept = select(tensors).cpu()
        start = 0
        for n, t in tensors.items():
            keep[n] = kept[start : start + t.numel()].reshape(t.shape).numpy()
            start += t.numel()
    else:
        for n, t in tensors.items():
            keep[n] = select({n: t}).cpu().reshape(t.shape).numpy()
    mask = WeightMask(keep, model=model)
    mask.meta.update(
        {"density": density, "scope": scope, "rule": rule, "kept": int(sum(int(k.sum()) for k in keep.values()))}
    )
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
    rule: str = "exact",
    **options,
) -> WeightMask:
    """Score and mask ``model`` at ``density``, single-shot or iteratively.

    Each round k of ``rounds`` scores the model with the current mask applied (removed weights zero),
    then selects at d_k by ``schedule`` and ``rule``; weights removed in earlier rounds stay removed. The
    model's weights are restored afterwards (the mask is returned, not applied).

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
        rule: ``exact`` (keep round(d·N), ties by position) or ``reference`` (Synaptic-Flow's kept count
            and tie rule: with it, 100-round SynFlow gives the reference's mask); see the module doc.
        **options: Scorer options (``dense_classifier``, ``prune_bias``, ``seed``, gcs modes ...).

    Returns:
        The mask; ``meta`` records method, density, scope, rule, rounds, schedule and collapsed layers.
    """
    if rule not in RULES:
        raise HwpruneError(f"unknown masking rule {rule!r}: use one of {', '.join(RULES)}")
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
            mask = mask_from_scores(score(), target, scope=scope, pruned=mask, model=model_name, rule=rule)
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
