"""Channel importances: one score per channel of every group, from weights, gradients or Hg products.

Every scorer is a plain function ``(model, graph, batches=None, **opts) -> {group id: np.ndarray[group.size]}``
registered in :data:`CHANNEL_IMPORTANCES`; turning scores into masks is
:func:`hwprune.prune.channel.uniform_channel_mask`. The measures follow the gradient-flow framework
(``docs/methods.md``), with ``θ`` a parameter, ``ḡ`` its loss gradient and ``Hg`` the Hessian-gradient product:

=================  =============================  ===========================================
name               per channel                    needs
=================  =============================  ===========================================
``random``         uniform [0, 1) (``seed``)      nothing
``l1``             Σ|θ|                           weights
``l2``             ‖θ‖₂ (alias ``mag_based``)     weights
``bn``             Σ|γ| of the group's norms      weights (no norm: falls back to ``l1``)
``loss_based``     Σ|θ ḡ|                         batches
``biased_loss``    Σ|θ² ḡ| or Σ|θ-θ₀|·|θ ḡ|       batches (``use_init``: a state dict of θ₀)
``tfo``            |Σ θ ḡ|                        batches
``fisher``         Σ θ² E[g²]                     batches
``taylor``         Σ γ² E[g_γ²] + β² E[g_β²]      batches (alias ``nvidia``; no norm: ``fisher``)
``grasp``          Σ θ ⊙ Hg (signed, ``T`` = 200) batches
``grad_preserve``  |Σ θ ⊙ Hg| (``T`` = 1)         batches
``activation``     Σ E|a| of its producer outputs  batches (inputs only; Minitron's importance)
=================  =============================  ===========================================

**Aggregation.** A channel's parameters are every position it occupies in every slice of its group:
producer rows (conv/linear weight *and* bias), consumer columns of the next layers, and per-channel
parameters riding along (norm γ/β, layer scales). A measure is ``post(Σ q(θ))``: the element-wise quantity
``q`` (e.g. ``|θ ḡ|``) summed over all those elements, then ``post`` (identity; ``sqrt`` for ``l2``; ``abs``
for ``tfo`` and ``grad_preserve``). A slice with ``inner`` > 1 contributes all its positions; a grouped-conv
input slice contributes the columns of its conv group's rows. An element seen twice by the same channel
(a residual conv whose input and output lie in one group: its diagonal) counts once. Buffers (BN running
statistics) carry no weight or gradient and are skipped. Pass ``roles=("producer",)`` to score producer
slices only: on a plain conv → BN → ReLU chain that is the seed's per-filter score of the conv weight
plus its bias. ``bn`` and ``taylor`` read only the γ/β of norm layers (BatchNorm, GroupNorm, LayerNorm,
InstanceNorm, RMSNorm) on the group's ``param`` slices; a group with none falls back as the table says.

**Gradients.** The model is put in eval mode (running BN statistics, no dropout, as in the seed), every
parameter is made to require grad, and for each batch ``(x, y)`` the loss ``loss_fn(model(x) / T, y)``
(default cross-entropy) is differentiated with :func:`torch.autograd.grad`. ``ḡ`` and ``E[g²]`` are
batch-size-weighted means over batches of the mini-batch gradient and of its square (the seed's
empirical Fisher). ``Hg`` is ``E_b[H_b ḡ]``: a first pass computes ``ḡ``, a second differentiates
``ḡ · g_b`` per batch. The temperature ``T`` defaults to 5 (200 for ``grasp``, 1 for ``grad_preserve``).
Afterwards each module's train/eval mode and each parameter's ``requires_grad`` are restored, and no
``.grad`` is written (they are left exactly as they were).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from functools import wraps

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.graph_mapper.types import CONSUMER, GROUPED_IN, PARAM, PRODUCER, ChannelGraph, ChannelGroup
from hwprune.prune.channel import random_scores
from hwprune.prune.gradients import batch_loss, grads, hessian_vector_product, scoring_state
from hwprune.registry import Registry

ALL_ROLES = (PRODUCER, CONSUMER, PARAM)
DEFAULT_T = 5.0

Batches = list[tuple[torch.Tensor, torch.Tensor]]
ChannelScores = dict[int, np.ndarray]

CHANNEL_IMPORTANCES: Registry = Registry("channel importance")

_NORMS = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,
        nn.GroupNorm,
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)


def register_importance(*names: str, needs_data: bool) -> Callable:
    """Register a channel importance under ``names`` (docs/extending.md has a worked example).

    The function takes ``(model, graph, batches, **options)`` and returns a score per channel of every group
    (``{group id: array of group.size}``, higher = more important); the wrapper refuses unknown options and,
    when ``needs_data``, missing batches, in one line each.
    """

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        accepted = [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]

        @wraps(fn)
        def scorer(model: nn.Module, graph: ChannelGraph, batches: Batches | None = None, **opts) -> ChannelScores:
            unknown = sorted(set(opts) - set(accepted))
            if unknown:
                raise HwpruneError(
                    f"channel importance {names[0]!r} takes no option {', '.join(unknown)} "
                    f"(options: {', '.join(accepted) or 'none'})"
                )
            batches = None if batches is None else list(batches)  # read twice for Hg
            if needs_data and not batches:
                raise HwpruneError(
                    f"channel importance {names[0]!r} needs data: pass batches=[(x, y), ...] (gradients are averaged "
                    "over them)"
                )
            return fn(model, graph, batches, **opts)

        scorer.needs_data = needs_data
        for name in names:
            CHANNEL_IMPORTANCES.add(name, scorer)
        return scorer

    return decorate


# ---------------------------------------------------------------- aggregation over a group's slices


def _position_labels(group: ChannelGroup, sl, length: int) -> torch.Tensor:
    """Channel of the group at each position of the slice's axis (-1 where another group lives)."""
    labels = torch.full((length,), -1, dtype=torch.long)
    channel = torch.arange(group.size).repeat_interleave(sl.inner)
    labels[torch.as_tensor(sl.index, dtype=torch.long)] = channel
    return labels


def _element_labels(graph: ChannelGraph, group: ChannelGroup, sl, shape: torch.Size) -> torch.Tensor:
    """Channel of the group owning each element of the tensor through this slice, -1 for none."""
    if sl.kind == GROUPED_IN:  # position i: column i % cin_g of the rows of conv group i // cin_g
        conv_groups = graph.sites[sl.site].conv_groups if sl.site >= 0 else 1
        cout_g, cin_g = shape[0] // conv_groups, shape[1]
        pos = _position_labels(group, sl, conv_groups * cin_g)
        block = torch.arange(shape[0]) // cout_g
        grid = pos[(block[:, None] * cin_g + torch.arange(cin_g)[None, :])]
        return grid.reshape(shape[0], shape[1], *([1] * (len(shape) - 2))).expand(shape)
    pos = _position_labels(group, sl, shape[sl.axis])
    view = [1] * len(shape)
    view[sl.axis] = shape[sl.axis]
    return pos.reshape(view).expand(shape)


def _aggregate(
    graph: ChannelGraph,
    group: ChannelGroup,
    slices: list,
    quantity: Callable[[str], torch.Tensor | None],
) -> np.ndarray:
    """Σ over the group's ``slices`` of the element-wise ``quantity(tensor name)``, per channel.

    ``quantity`` returns a tensor of the parameter's shape, or None to skip the tensor (a buffer).
    """
    total = torch.zeros(group.size + 1, dtype=torch.float64)
    by_tensor: dict[str, list] = {}
    for sl in slices:
        by_tensor.setdefault(sl.tensor, []).append(sl)
    for name, tensor_slices in by_tensor.items():
        q = quantity(name)
        if q is None:
            continue
        q = q.detach().to("cpu", torch.float64)
        seen: list[torch.Tensor] = []
        for sl in tensor_slices:
            labels = _element_labels(graph, group, sl, q.shape)
            for earlier in seen:  # an element one channel owns through two slices counts once
                labels = torch.where(labels == earlier, -1, labels)
            seen.append(labels)
            total += torch.bincount(labels.reshape(-1) + 1, weights=q.reshape(-1), minlength=group.size + 1)
    return total[1:].numpy()


def _slices(group: ChannelGroup, roles: tuple[str, ...] | str) -> list:
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    bad = sorted(set(roles) - set(ALL_ROLES))
    if bad:
        raise HwpruneError(f"unknown slice role {', '.join(bad)} (roles: {', '.join(ALL_ROLES)})")
    return [sl for sl in group.slices if sl.role in roles]


def _params_of(model: nn.Module, graph: ChannelGraph) -> dict[str, nn.Parameter]:
    """The model's parameters by name; refuses a graph naming tensors the model lacks."""
    params = dict(model.named_parameters(remove_duplicate=False))
    known = set(params) | {n for n, _ in model.named_buffers()}
    missing = sorted({sl.tensor for g in graph.groups for sl in g.slices} - known)
    if missing:
        raise HwpruneError(
            f"the channel graph names tensors the model lacks ({', '.join(missing[:3])}): build the graph from "
            "this model"
        )
    return params


def _norm_slices(model: nn.Module, group: ChannelGroup) -> list:
    """The group's param slices that are γ (weight) or β (bias) of a normalisation layer."""
    out = []
    for sl in group.params:
        owner, _, attr = sl.tensor.rpartition(".")
        if attr in ("weight", "bias") and isinstance(model.get_submodule(owner), _NORMS):
            out.append(sl)
    return out


def _score_all(
    model: nn.Module,
    graph: ChannelGraph,
    quantity: Callable[[str], torch.Tensor | None],
    roles: tuple[str, ...],
    post: Callable[[np.ndarray], np.ndarray] = lambda s: s,
) -> ChannelScores:
    return {g.id: post(_aggregate(graph, g, _slices(g, roles), quantity)) for g in graph.groups}


def _elementwise(params: Mapping[str, torch.Tensor], fn: Callable[..., torch.Tensor], *stats: Mapping):
    """``quantity(name)`` = ``fn(θ, stat1[name], ...)``; None for tensors that are not parameters."""

    def quantity(name: str) -> torch.Tensor | None:
        if name not in params:
            return None
        with torch.no_grad():
            return fn(params[name].detach(), *(s[name] for s in stats))

    return quantity


# ---------------------------------------------------------------- gradient statistics


def gradient_stats(
    model: nn.Module,
    batches: Batches,
    T: float = DEFAULT_T,
    loss_fn: Callable = F.cross_entropy,
    hvp: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Batch-size-weighted means over ``batches`` of the gradient ``g``, of ``g²`` and (``hvp``) of ``H ḡ``.

    Returns ``{"g": {name: tensor}, "g2": {...}, "hg": {...}}`` keyed by parameter name (``hg`` only with
    ``hvp``). Runs in eval mode; modes, ``requires_grad`` and ``.grad`` are left as they were.
    """
    named = list(model.named_parameters())
    if not named:
        raise HwpruneError(f"{type(model).__name__} has no parameters to take gradients of")
    params = [p for _, p in named]
    with scoring_state(model, params):
        g_sum = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        g2_sum = [torch.zeros_like(p, dtype=torch.float64) for p in params]
        n = 0
        for x, y in batches:
            b = int(x.shape[0])
            for acc, acc2, g in zip(g_sum, g2_sum, grads(batch_loss(model, x, y, loss_fn, T), params), strict=True):
                acc += b * g.double()
                acc2 += b * g.double() ** 2
            n += b
        out = {"g": [a / n for a in g_sum], "g2": [a / n for a in g2_sum]}
        if hvp:  # the Hessian of the sample-mean loss times the mean gradient ḡ
            g_bar = [(a / n).to(p.dtype) for a, p in zip(g_sum, params, strict=True)]
            hg = hessian_vector_product(model, batches, params, g_bar, loss_fn, T, weight=lambda x: x.shape[0] / n)
            out["hg"] = hg
    # every name of a shared parameter maps to its statistics
    index = {id(p): i for i, p in enumerate(params)}
    aliases = {name: index[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}
    return {k: {name: v[i] for name, i in aliases.items()} for k, v in out.items()}


# ---------------------------------------------------------------- the measures


@register_importance("random", needs_data=False)
def random_importance(
    model: nn.Module, graph: ChannelGraph, batches: Batches | None, *, seed: int = 0
) -> ChannelScores:
    """Uniform random scores (a baseline); ``seed`` fixes them."""
    return random_scores(graph, seed=seed)


@register_importance("l1", needs_data=False)
def l1_importance(
    model: nn.Module, graph: ChannelGraph, batches: Batches | None, *, roles: tuple[str, ...] = ALL_ROLES
) -> ChannelScores:
    """Σ|θ| over the channel's parameters (Li et al., ICLR 2017, extended to every slice)."""
    return _score_all(model, graph, _elementwise(_params_of(model, graph), torch.abs), roles)


@register_importance("l2", "mag_based", needs_data=False)
def l2_importance(
    model: nn.Module, graph: ChannelGraph, batches: Batches | None, *, roles: tuple[str, ...] = ALL_ROLES
) -> ChannelScores:
    """‖θ‖₂ of all the channel's parameters together (the seed's ``mag_based``)."""
    return _score_all(model, graph, _elementwise(_params_of(model, graph), torch.square), roles, np.sqrt)


@register_importance("bn", needs_data=False)
def bn_importance(model: nn.Module, graph: ChannelGraph, batches: Batches | None) -> ChannelScores:
    """Σ|γ| over the normalisation layers on the group (NetSlim); groups without one: ``l1`` of producers."""
    params = _params_of(model, graph)
    out = {}
    for g in graph.groups:
        gammas = [sl for sl in _norm_slices(model, g) if sl.tensor.endswith(".weight")]
        if gammas:
            out[g.id] = _aggregate(graph, g, gammas, _elementwise(params, torch.abs))
        else:
            out[g.id] = _aggregate(graph, g, list(g.producers), _elementwise(params, torch.abs))
    return out


def _grad_opts(T: float, loss_fn: Callable | None) -> dict:
    return {"T": float(T), "loss_fn": loss_fn or F.cross_entropy}


@register_importance("loss_based", needs_data=True)
def loss_based_importance(
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    *,
    T: float = DEFAULT_T,
    loss_fn: Callable | None = None,
    roles: tuple[str, ...] = ALL_ROLES,
) -> ChannelScores:
    """Σ|θ ḡ|: loss preservation (first-order Taylor, per parameter)."""
    params = _params_of(model, graph)
    stats = gradient_stats(model, batches, **_grad_opts(T, loss_fn))
    q = _elementwise(params, lambda p, g: (p.double() * g).abs(), stats["g"])
    return _score_all(model, graph, q, roles)


@register_importance("biased_loss", needs_data=True)
def biased_loss_importance(
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    *,
    T: float = DEFAULT_T,
    loss_fn: Callable | None = None,
    roles: tuple[str, ...] = ALL_ROLES,
    use_init: Mapping[str, torch.Tensor] | None = None,
) -> ChannelScores:
    """Σ|θ² ḡ|; with ``use_init`` (a state dict of the initial θ₀) Σ|θ-θ₀|·|θ ḡ|."""
    params = _params_of(model, graph)
    stats = gradient_stats(model, batches, **_grad_opts(T, loss_fn))
    if use_init is None:
        q = _elementwise(params, lambda p, g: (p.double() ** 2 * g).abs(), stats["g"])
    else:
        missing = sorted(n for n in params if n not in use_init)
        if missing:
            raise HwpruneError(f"use_init lacks initial values for {', '.join(missing[:3])}: pass the θ₀ state dict")
        init = {n: use_init[n].detach().to(p.device, torch.float64) for n, p in params.items()}
        q = _elementwise(params, lambda p, g, p0: (p.double() - p0).abs() * (p.double() * g).abs(), stats["g"], init)
    return _score_all(model, graph, q, roles)


@register_importance("tfo", needs_data=True)
def tfo_importance(
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    *,
    T: float = DEFAULT_T,
    loss_fn: Callable | None = None,
    roles: tuple[str, ...] = ALL_ROLES,
) -> ChannelScores:
    """|Σ θ ḡ|: first-order Taylor of the loss change when the whole channel goes (Molchanov et al. 2017)."""
    params = _params_of(model, graph)
    stats = gradient_stats(model, batches, **_grad_opts(T, loss_fn))
    q = _elementwise(params, lambda p, g: p.double() * g, stats["g"])
    return _score_all(model, graph, q, roles, np.abs)


@register_importance("fisher", needs_data=True)
def fisher_importance(
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    *,
    T: float = DEFAULT_T,
    loss_fn: Callable | None = None,
    roles: tuple[str, ...] = ALL_ROLES,
) -> ChannelScores:
    """Σ θ² E[g²] (Theis et al. 2018, squared TFO with the empirical Fisher over mini-batches)."""
    params = _params_of(model, graph)
    stats = gradient_stats(model, batches, **_grad_opts(T, loss_fn))
    q = _elementwise(params, lambda p, g2: p.double() ** 2 * g2, stats["g2"])
    return _score_all(model, graph, q, roles)


@register_importance("taylor", "nvidia", needs_data=True)
def taylor_importance(
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    *,
    T: float = DEFAULT_T,
    loss_fn: Callable | None = None,
) -> ChannelScores:
    """Σ γ² E[g_γ²] + β² E[g_β²] over the group's norm layers (Molchanov et al. 2019).

    A group without a norm layer is scored by ``fisher`` on its producer slices (weights and biases).
    """
    params = _params_of(model, graph)
    stats = gradient_stats(model, batches, **_grad_opts(T, loss_fn))
    q = _elementwise(params, lambda p, g2: p.double() ** 2 * g2, stats["g2"])
    return {g.id: _aggregate(graph, g, _norm_slices(model, g) or list(g.producers), q) for g in graph.groups}


def _hg_scores(model, graph, batches, T, loss_fn, roles, post) -> ChannelScores:
    params = _params_of(model, graph)
    stats = gradient_stats(model, batches, hvp=True, **_grad_opts(T, loss_fn))
    q = _elementwise(params, lambda p, hg: p.double() * hg, stats["hg"])
    return _score_all(model, graph, q, roles, post)


@register_importance("grasp", needs_data=True)
def grasp_importance(
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    *,
    T: float = 200.0,
    loss_fn: Callable | None = None,
    roles: tuple[str, ...] = ALL_ROLES,
) -> ChannelScores:
    """Σ θ ⊙ Hg, signed (GraSP's gradient-norm change, seed convention: low scores are removed)."""
    return _hg_scores(model, graph, batches, T, loss_fn, roles, lambda s: s)


@register_importance("grad_preserve", needs_data=True)
def grad_preserve_importance(
    model: nn.Module,
    graph: ChannelGraph,
    batches: Batches,
    *,
    T: float = 1.0,
    loss_fn: Callable | None = None,
    roles: tuple[str, ...] = ALL_ROLES,
) -> ChannelScores:
    """|Σ θ ⊙ Hg|: gradient-norm preservation."""
    return _hg_scores(model, graph, batches, T, loss_fn, roles, np.abs)


@register_importance("activation", "minitron", needs_data=True)
def activation_importance(model: nn.Module, graph: ChannelGraph, batches: Batches) -> ChannelScores:
    """Mean absolute activation of each channel on the batches (Minitron's activation-based importance).

    Forward hooks on the layers whose weights produce a group's channels (conv and linear rows, embedding
    columns, GPT-2's Conv1D columns) read their outputs: a channel's score sums, over those layers, the mean
    of ``|a|`` over every position of the output but the channel axis. Only the inputs of the batches are
    used (token ids for a language model), in eval mode. A group none of whose producers is a layer the hooks
    can read (a functional op) is scored by ``l1``.
    """
    producers: dict[str, list[tuple[ChannelGroup, object]]] = {}
    for g in graph.groups:
        for sl in g.producers:
            owner, _, attr = sl.tensor.rpartition(".")
            if attr == "weight":
                producers.setdefault(owner, []).append((g, sl))
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            dim = 1 if isinstance(module, nn.modules.conv._ConvNd) else output.dim() - 1
            a = output.detach().abs().double().movedim(dim, -1).reshape(-1, output.shape[dim])
            sums[name] = sums.get(name, 0) + a.sum(0)
            counts[name] = counts.get(name, 0) + a.shape[0]

        return hook

    hooks = [modules[name].register_forward_hook(record(name)) for name in producers if name in modules]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, mode in modes:
            m.training = mode
    scores = {g.id: np.zeros(g.size) for g in graph.groups}
    measured: set[int] = set()
    for name, entries in producers.items():
        if name not in sums:
            continue
        mean = sums[name] / counts[name]
        for g, sl in entries:
            if mean.numel() != modules[name].weight.shape[sl.axis]:  # the output is not this axis's channels
                continue
            labels = _position_labels(g, sl, mean.numel())
            scores[g.id] += torch.bincount(labels + 1, weights=mean, minlength=g.size + 1)[1:].numpy()
            measured.add(g.id)
    if len(measured) < len(graph.groups):
        fallback = l1_importance(model, graph, None)
        scores |= {gid: fallback[gid] for gid in scores if gid not in measured}
    return scores


def channel_importance(
    name: str, model: nn.Module, graph: ChannelGraph, batches: Batches | None = None, **opts
) -> ChannelScores:
    """Look up ``name`` in :data:`CHANNEL_IMPORTANCES` and score every group of ``graph``."""
    return CHANNEL_IMPORTANCES.get(name)(model, graph, batches, **opts)
