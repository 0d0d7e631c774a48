"""Per-weight importance scores for unstructured pruning at initialization.

Every scorer is a plain function ``(model, batches, *, loss_fn=cross_entropy, **options) -> {param
name: score tensor}`` registered in :data:`WEIGHT_SCORERS`. ``batches`` is the pruning set, a list of
``(x, y)`` tensors. Higher score = more important: the masking step (:mod:`hwprune.prune.weight_masking`)
keeps the highest scores and prunes the lowest, for every scorer.

The formulas follow the public reference implementations (Synaptic-Flow for rand/mag/snip/grasp/
synflow, the GCS code for gcs*); formulas: ``docs/methods.md``. Sign conventions:

* GraSP: the score is the signed ``θ ⊙ Hg`` and the lowest scores are pruned (Synaptic-Flow's
  convention; the GraSP paper writes ``S = -θ ⊙ Hg`` and removes the *highest* S, which selects the same
  weights). GCS with ``prune_mode`` 1 keeps the top of the signed sum too, so ``gcs`` with the ``grasp``
  preset ranks weights exactly as ``grasp`` does (its vector is ``∇‖g‖² = 2Hg``).
* SNIP, SynFlow, Mag are non-negative.

Scorers leave the model as they found it: train/eval mode per module, ``requires_grad`` flags, ``.grad``
(gradients are taken with ``torch.autograd.grad`` and never accumulated into ``.grad``), parameter and
buffer values (SynFlow and GCS work on a deep copy, GCS in train mode by default; ``train_mode=True``
restores batch-norm statistics). Scorers that draw random numbers (``rand``, the GCS re-initialisation)
take a ``seed``.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.prune.gradients import batch_loss, grads, hessian_vector_product, model_device, scoring_state
from hwprune.registry import Registry

Batches = Sequence[tuple[torch.Tensor, torch.Tensor]]
WeightScores = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

WEIGHT_SCORERS: Registry[Callable[..., WeightScores]] = Registry("weight scorer")

NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
GCS_PRESETS: dict[str, dict[str, int]] = {
    "gcs": {"data_mode": 1, "grad_mode": 2, "prune_mode": 2, "num_group": 2},
    "gcs-group": {"data_mode": 1, "grad_mode": 2, "prune_mode": 4, "num_group": 5},
    "grasp": {"data_mode": 0, "grad_mode": 0, "prune_mode": 1, "num_group": 1},
    "snip": {"data_mode": 0, "grad_mode": 3, "prune_mode": 1, "num_group": 1},
}
GCS_SCALE = 1e6  # the reference's fixed factor for prune_mode 3 and 4 (keeps products out of underflow)
GRASP_TEMPERATURE = 200.0
GCS_SCORERS = ("gcs", "gcs-group", "gcs-grasp", "gcs-snip")  # registered below, one per preset
EPS = 1e-10


# --------------------------------------------------------------------------- prunable tensors


def _is_weighted(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))


def prunable_tensors(
    model: nn.Module, *, dense_classifier: bool = False, prune_bias: bool = False, prune_norm: bool = False
) -> dict[str, nn.Parameter]:
    """The tensors a weight mask may cover, by ``named_parameters`` name, in model order.

    Args:
        model: The model.
        dense_classifier: Leave the classifier (the last Conv/Linear module in registration order) dense.
        prune_bias: Also score the biases of the Conv/Linear layers (and of norm layers with ``prune_norm``).
        prune_norm: Also score the affine weights of BatchNorm/InstanceNorm/GroupNorm/LayerNorm.

    Returns:
        ``{name: parameter}``; weights of Conv and Linear layers by default.
    """
    names = {id(p): n for n, p in model.named_parameters()}
    modules = list(model.modules())
    weighted = [m for m in modules if _is_weighted(m)]
    classifier = weighted[-1] if weighted else None
    out: dict[str, nn.Parameter] = {}
    for module in modules:
        if _is_weighted(module):
            if dense_classifier and module is classifier:
                continue
        elif not (prune_norm and isinstance(module, NORM_TYPES)):
            continue
        for attr in ("weight", "bias") if prune_bias else ("weight",):
            p = getattr(module, attr, None)
            if isinstance(p, nn.Parameter) and id(p) in names:
                out.setdefault(names[id(p)], p)
    if not out:
        raise HwpruneError(f"{type(model).__name__} has no prunable tensor (no Conv or Linear weights to score)")
    return out


# --------------------------------------------------------------------------- helpers


def _need_batches(batches: Batches | None, method: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if not batches:
        raise HwpruneError(f"{method} needs pruning data: pass a non-empty list of (x, y) batches")
    return list(batches)


def _normalise(scores: WeightScores, absolute_sum: bool) -> WeightScores:
    total = sum(s.sum() for s in scores.values())
    norm = (abs(total) + EPS) if absolute_sum else total
    if not absolute_sum and float(norm) == 0.0:
        return scores
    return {n: s / norm for n, s in scores.items()}


def pruning_set(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    samples_per_class: int = 10,
    batch_size: int = 256,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Pick the reference pruning set: the first ``samples_per_class`` samples of each class.

    The samples are returned class-contiguous (all of class 0, then class 1, ...) in batches of
    ``batch_size``, as the reference code fetches them.
    """
    xs: list[list[torch.Tensor]] = [[] for _ in range(num_classes)]
    for x, y in batches:
        for i, label in enumerate(y.tolist()):
            if 0 <= label < num_classes and len(xs[label]) < samples_per_class:
                xs[label].append(x[i])
        if all(len(c) == samples_per_class for c in xs):
            break
    short = [c for c in range(num_classes) if len(xs[c]) < samples_per_class]
    if short:
        raise HwpruneError(
            f"the data has fewer than {samples_per_class} samples of class(es) {short[:5]}: "
            "lower samples_per_class or check num_classes"
        )
    x = torch.stack([s for c in xs for s in c])
    y = torch.arange(num_classes).repeat_interleave(samples_per_class)
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


def score_weights(method: str, model: nn.Module, batches: Batches | None, **options) -> WeightScores:
    """Run the registered scorer ``method``, refusing unknown options with one line."""
    scorer = WEIGHT_SCORERS.get(method)
    accepted = [p for p in inspect.signature(scorer).parameters if p not in ("model", "batches")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise HwpruneError(f"scorer {method!r} has no option {', '.join(unknown)} (options: {', '.join(accepted)})")
    return scorer(model, batches, **options)


# --------------------------------------------------------------------------- Synaptic-Flow scorers


@WEIGHT_SCORERS.register("rand")
def rand_scores(
    model: nn.Module,
    batches: Batches | None = None,
    *,
    loss_fn: LossFn = F.cross_entropy,
    seed: int = 0,
    dense_classifier: bool = False,
    prune_bias: bool = False,
    prune_norm: bool = False,
) -> WeightScores:
    """Random scores, N(0, 1) per weight, drawn from a generator seeded with ``seed``."""
    params = prunable_tensors(model, dense_classifier=dense_classifier, prune_bias=prune_bias, prune_norm=prune_norm)
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.device) for n, p in params.items()}


@WEIGHT_SCORERS.register("mag")
def mag_scores(
    model: nn.Module,
    batches: Batches | None = None,
    *,
    loss_fn: LossFn = F.cross_entropy,
    dense_classifier: bool = False,
    prune_bias: bool = False,
    prune_norm: bool = False,
) -> WeightScores:
    """Magnitude |θ|."""
    params = prunable_tensors(model, dense_classifier=dense_classifier, prune_bias=prune_bias, prune_norm=prune_norm)
    return {n: p.detach().abs().clone() for n, p in params.items()}


@WEIGHT_SCORERS.register("snip")
def snip_scores(
    model: nn.Module,
    batches: Batches,
    *,
    loss_fn: LossFn = F.cross_entropy,
    train_mode: bool = False,
    dense_classifier: bool = False,
    prune_bias: bool = False,
    prune_norm: bool = False,
) -> WeightScores:
    """SNIP connection sensitivity |g ⊙ θ|, g summed over the batches, normalised by the global sum."""
    batches = _need_batches(batches, "snip")
    params = prunable_tensors(model, dense_classifier=dense_classifier, prune_bias=prune_bias, prune_norm=prune_norm)
    dev = model_device(model)
    total = [torch.zeros_like(p) for p in params.values()]
    with scoring_state(model, params.values(), train_mode):
        for x, y in batches:
            loss = loss_fn(model(x.to(dev)), y.to(dev))
            for acc, g in zip(total, grads(loss, params), strict=True):
                acc += g.detach()
    scores = {n: (g * p.detach()).abs() for (n, p), g in zip(params.items(), total, strict=True)}
    return _normalise(scores, absolute_sum=False)


def hessian_gradient_product(
    model: nn.Module,
    batches: Batches,
    params: dict[str, nn.Parameter],
    *,
    loss_fn: LossFn = F.cross_entropy,
    temperature: float = GRASP_TEMPERATURE,
) -> WeightScores:
    """``H g`` of the loss summed over ``batches`` (logits divided by ``temperature``), w.r.t. ``params``.

    Pass 1 sums g over the batches and detaches it; pass 2 back-propagates ``g_detached · g_b`` per batch
    through the graph of the gradient and sums (GraSP's reference). The caller sets the model's mode.
    """
    g_fixed = [torch.zeros_like(p) for p in params.values()]
    for x, y in batches:
        for acc, g in zip(g_fixed, grads(batch_loss(model, x, y, loss_fn, temperature), params), strict=True):
            acc += g.detach()
    hg = hessian_vector_product(model, batches, list(params.values()), g_fixed, loss_fn, temperature)
    return {n: h.to(p.dtype) for (n, p), h in zip(params.items(), hg, strict=True)}


@WEIGHT_SCORERS.register("grasp")
def grasp_scores(
    model: nn.Module,
    batches: Batches,
    *,
    loss_fn: LossFn = F.cross_entropy,
    temperature: float = GRASP_TEMPERATURE,
    train_mode: bool = False,
    dense_classifier: bool = False,
    prune_bias: bool = False,
    prune_norm: bool = False,
) -> WeightScores:
    """GraSP: signed ``θ ⊙ Hg`` normalised by ``|Σ| + eps``; the lowest scores are pruned (see module doc)."""
    batches = _need_batches(batches, "grasp")
    params = prunable_tensors(model, dense_classifier=dense_classifier, prune_bias=prune_bias, prune_norm=prune_norm)
    with scoring_state(model, params.values(), train_mode):
        hg = hessian_gradient_product(model, batches, params, loss_fn=loss_fn, temperature=temperature)
    scores = {n: p.detach() * hg[n] for n, p in params.items()}
    return _normalise(scores, absolute_sum=True)


SYNFLOW_RESCALE = ("auto", True, False)


def _pow2_normalise(x):
    """``x`` times the power of two that brings its largest magnitude into [0.5, 1) (exact in binary floats).

    Anything that is not a non-empty floating tensor with a finite, non-zero maximum passes unchanged.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        return x
    top = float(x.detach().abs().max())
    if not (top > 0.0 and math.isfinite(top)):
        return x
    e = -math.frexp(top)[1]
    half = e // 2  # two factors: each stays representable in the tensor's dtype
    return x * (2.0**half) * (2.0 ** (e - half))


def _cut_nodes(graph: torch.fx.Graph) -> list[torch.fx.Node]:
    """The nodes every path from the input to the output passes through (in graph order).

    Only the data flow from the placeholders to the output counts (parameters and constants do not). In
    a topological order a node is on every input-output path exactly when no data edge jumps over it.
    """
    nodes = list(graph.nodes)
    forward: set[torch.fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder" or any(a in forward for a in n.all_input_nodes):
            forward.add(n)
    backward: set[torch.fx.Node] = set()
    for n in reversed(nodes):
        if n.op == "output" or any(u in backward for u in n.users):
            backward.add(n)
    live = forward & backward
    pos = {n: i for i, n in enumerate(nodes)}
    cuts, far = [], -1
    for i, n in enumerate(nodes):
        if n not in live:
            continue
        if far <= i and n.op not in ("placeholder", "output"):
            cuts.append(n)
        far = max([far] + [pos[u] for u in n.users if u in live])
    return cuts


def _rescaled(net: nn.Module) -> nn.Module:
    """``net`` traced with torch.fx, the output of every input-output cut node normalised by a power of two.

    A cut node carries the whole signal, so scaling its output by ``c`` scales R, and every SynFlow score
    (upstream and downstream), by the same ``c`` as long as what follows is positively homogeneous (no
    additive bias or shift before the output: every zoo CNN at initialisation; the classifier's own bias
    adds a constant to R and changes no gradient). Powers of two are exact, so the ranking is the
    unscaled one bit for bit, while each stretch between cuts (a residual block, a dense block) only
    has its own growth to hold.
    """
    try:
        graph_module = torch.fx.symbolic_trace(net)
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: cannot rescale this model
        raise HwpruneError(
            f"synflow cannot rescale {type(net).__name__} (asked for, or its flow overflows float64): torch.fx "
            f"cannot trace it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    graph = graph_module.graph
    for node in _cut_nodes(graph):
        with graph.inserting_after(node):
            scaled = graph.call_function(_pow2_normalise, (node,))
        node.replace_all_uses_with(scaled, delete_user_cb=lambda user, scaled=scaled: user is not scaled)
    graph.lint()
    graph_module.recompile()
    return graph_module


def _synflow_pass(
    model: nn.Module, input_shape: Sequence[int], dtype: torch.dtype, rescale: bool, select: dict
) -> tuple[WeightScores, torch.Tensor]:
    """One SynFlow evaluation in ``dtype`` (rescaled at the cut nodes or not): ``(scores, R)``."""
    net = copy.deepcopy(model).eval()
    if any(t.is_floating_point() and t.dtype != dtype for t in itertools.chain(net.parameters(), net.buffers())):
        net.to(dtype)
    with torch.no_grad():
        for t in itertools.chain(net.parameters(), net.buffers()):
            if t.is_floating_point():
                t.abs_()
    params = prunable_tensors(net, **select)
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    run = _rescaled(net) if rescale else net
    out = run(torch.ones([1, *input_shape], dtype=dtype, device=model_device(net)))
    if not isinstance(out, torch.Tensor):
        raise HwpruneError(f"synflow needs a model whose output is one tensor, got {type(out).__name__}")
    flow = out.sum()
    flow_grads = grads(flow, params)
    scores = {n: (g * p.detach()).abs() for (n, p), g in zip(params.items(), flow_grads, strict=True)}
    return scores, flow.detach()


@WEIGHT_SCORERS.register("synflow")
def synflow_scores(
    model: nn.Module,
    batches: Batches | None = None,
    *,
    loss_fn: LossFn = F.cross_entropy,
    input_shape: Sequence[int] | None = None,
    double: bool = False,
    rescale: bool | str = "auto",
    dense_classifier: bool = False,
    prune_bias: bool = False,
    prune_norm: bool = False,
) -> WeightScores:
    """Synaptic flow |θ ⊙ ∂R/∂θ|, R = sum of the output of the all-|θ| network on an all-ones input.

    Data-free: the input shape is taken from the first batch (``[1, *x.shape[1:]]``) or ``input_shape``
    (without the batch dimension, e.g. ``(3, 32, 32)``). Works on a deep copy in eval mode, with every
    floating parameter and buffer replaced by its absolute value; the model itself is not touched.

    Deep networks overflow: R is ~1e70 on resnet56 (float32 ends at 3.4e38) and ~1e102 on densenet121,
    and grows without bound with depth. ``rescale`` decides what happens:

    * ``"auto"`` (default): the reference computation in the model's dtype (float64 with ``double``);
      if R or a score is not finite (or R underflows to 0), again in float64; if that overflows too, in
      float64 with every input-output cut of the traced graph normalised by a power of two (see
      :func:`_rescaled`), which keeps every magnitude in range at any depth and ranks exactly as the
      unscaled flow would. WeightScores are returned in the dtype of the computation that succeeded (float64
      after a fallback or with ``double``: never cast back to a dtype where they would be inf).
    * ``True``: always the rescaled computation, in the model's dtype (float64 with ``double``), then in
      float64 if that is not finite (densenet121's dense blocks outgrow float32 between two cuts).
    * ``False``: only the reference computation, whatever it gives.

    Rescaled scores equal the unscaled ones times one positive power of two (the same for every weight),
    so masks do not change; they are therefore "up to a global factor". Raises if no computation is
    finite.
    """
    if rescale not in SYNFLOW_RESCALE:
        raise HwpruneError(f"synflow rescale must be 'auto', True or False, got {rescale!r}")
    if input_shape is None:
        if not batches:
            raise HwpruneError("synflow needs an input shape: pass input_shape=(C, H, W) or one batch of data")
        input_shape = tuple(batches[0][0].shape[1:])
    select = {"dense_classifier": dense_classifier, "prune_bias": prune_bias, "prune_norm": prune_norm}
    floating = [t.dtype for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()]
    dtype = torch.float64 if double or not floating else floating[0]
    if rescale == "auto":
        attempts = [(dtype, False)] + ([(torch.float64, False)] if dtype != torch.float64 else [])
        attempts.append((torch.float64, True))
    elif rescale:
        attempts = [(dtype, True)] + ([(torch.float64, True)] if dtype != torch.float64 else [])
    else:
        attempts = [(dtype, False)]
    fallback: WeightScores | None = None  # finite, but R == 0 (a disconnected network): kept unless bettered
    for dt, scaled in attempts:
        try:
            scores, flow = _synflow_pass(model, input_shape, dt, scaled, select)
        except HwpruneError:
            if scaled and fallback is not None:
                return fallback
            raise
        if rescale is False:
            return scores
        # scores are >= 0 and max propagates NaN: a finite max means every score is finite
        finite = bool(torch.isfinite(flow)) and all(
            bool(torch.isfinite(s.amax())) for s in scores.values() if s.numel()
        )
        if finite and float(flow) > 0.0:
            return scores
        if finite and fallback is None:
            fallback = scores
    if fallback is not None:
        return fallback
    raise HwpruneError(
        f"synflow scores of {type(model).__name__} are not finite even in float64 with rescaling "
        "(an operation between two cuts of the graph overflows on its own)"
    )


# --------------------------------------------------------------------------- GCS


def gcs_groups(batches: Batches, num_group: int, data_mode: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Concatenate the pruning set and split it into ``num_group`` equal contiguous groups.

    ``data_mode`` 0 orders the samples class-contiguously (stable sort by label: groups see different
    labels); 1 interleaves the classes (i-th sample of each class in class order, then the next: every
    group sees all labels). As in the reference, ``N % num_group`` trailing samples are left out.
    """
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    labels = y.detach().cpu().numpy()
    if data_mode == 0:
        order = np.argsort(labels, kind="stable")
    else:
        rank = np.zeros(len(labels), dtype=np.int64)
        seen: dict[int, int] = {}
        for i, label in enumerate(labels.tolist()):
            rank[i] = seen.get(label, 0)
            seen[label] = rank[i] + 1
        order = np.lexsort((labels, rank))
    idx = torch.as_tensor(order, device=x.device)
    x, y = x[idx], y[idx]
    part = len(y) // num_group
    if part == 0:
        raise HwpruneError(f"gcs needs at least num_group={num_group} samples, the pruning set has {len(y)}")
    return [(x[i * part : (i + 1) * part], y[i * part : (i + 1) * part]) for i in range(num_group)]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((u * v).sum() for u, v in zip(a, b, strict=True))


def gcs_vectors(
    model: nn.Module,
    groups: list[tuple[torch.Tensor, torch.Tensor]],
    params: dict[str, nn.Parameter],
    *,
    grad_mode: int,
    loss_fn: LossFn = F.cross_entropy,
    temperature: float = GRASP_TEMPERATURE,
) -> list[WeightScores]:
    """The GCS vectors v_k (one per group or per pair of groups) for ``grad_mode``.

    With g_i the gradient of group i's loss (logits / ``temperature``):
    0: ∇‖g_i‖² = 2 H_i g_i per group; 1: ∇(g_sum · g_i) per group; 2: ∇(g_i · g_j) for every pair i < j
    (= H_i g_j + H_j g_i, the gradient coupling); 3: g_i per group (SNIP-like); 4: ∇(g_m · g_j) for every
    j, where m is the group with the largest Σ_j g_m · g_j (first one on ties).
    """
    dev = model_device(model)
    graph = grad_mode != 3
    g = []
    for x, y in groups:
        loss = loss_fn(model(x.to(dev)) / temperature, y.to(dev))
        g.append(grads(loss, params, create_graph=graph))
    n = len(g)
    if grad_mode == 0:
        zs = [_dot(gi, gi) for gi in g]
    elif grad_mode == 1:
        g_sum = [sum(t) for t in zip(*g, strict=True)]
        zs = [_dot(g_sum, gi) for gi in g]
    elif grad_mode == 2:
        zs = [_dot(g[i], g[j]) for i in range(n) for j in range(i + 1, n)]
    elif grad_mode == 3:
        return [dict(zip(params, [t.detach() for t in gi], strict=True)) for gi in g]
    else:
        totals = [float(sum(_dot(g[i], g[j]).detach() for j in range(n))) for i in range(n)]
        m = int(np.argmax(totals))
        zs = [_dot(g[m], g[j]) for j in range(n)]
    return [dict(zip(params, [t.detach() for t in grads(z, params)], strict=True)) for z in zs]


def gcs_combine(params: dict[str, torch.Tensor], vectors: list[WeightScores], prune_mode: int) -> WeightScores:
    """Per-weight GCS score from q_k = θ ⊙ v_k.

    1: Σ q_k; 2: |Σ q_k|; 3: GCS_SCALE · Π |q_k|; 4: sqrt(Σ (GCS_SCALE · q_k)²). Not normalised.
    """
    out = {}
    for name, p in params.items():
        qs = [p.detach() * v[name] for v in vectors]
        if prune_mode in (1, 2):
            s = sum(qs, torch.zeros_like(p))
            out[name] = s.abs() if prune_mode == 2 else s
        elif prune_mode == 3:
            s = torch.full_like(p, GCS_SCALE)
            for q in qs:
                s = s * q.abs()
            out[name] = s
        else:
            out[name] = sum(((GCS_SCALE * q) ** 2 for q in qs), torch.zeros_like(p)).sqrt()
    return out


def _check_choice(name: str, value: int, allowed: range) -> None:
    if value not in allowed:
        raise HwpruneError(f"gcs {name} must be one of {list(allowed)}, got {value}")


def _gcs(
    model: nn.Module,
    batches: Batches,
    *,
    preset: str,
    loss_fn: LossFn,
    data_mode: int | None,
    grad_mode: int | None,
    prune_mode: int | None,
    num_group: int | None,
    temperature: float,
    reinit: bool,
    seed: int,
    train_mode: bool,
    dense_classifier: bool,
    prune_bias: bool,
    prune_norm: bool,
) -> WeightScores:
    if preset not in GCS_PRESETS:
        raise HwpruneError(f"unknown gcs preset {preset!r} (known: {', '.join(GCS_PRESETS)})")
    cfg = dict(GCS_PRESETS[preset])
    for key, value in (
        ("data_mode", data_mode),
        ("grad_mode", grad_mode),
        ("prune_mode", prune_mode),
        ("num_group", num_group),
    ):
        if value is not None:
            cfg[key] = int(value)
    _check_choice("data_mode", cfg["data_mode"], range(2))
    _check_choice("grad_mode", cfg["grad_mode"], range(5))
    _check_choice("prune_mode", cfg["prune_mode"], range(1, 5))
    if cfg["num_group"] < 1 or (cfg["grad_mode"] == 2 and cfg["num_group"] < 2):
        raise HwpruneError(
            f"gcs num_group={cfg['num_group']} is too small"
            + (" for grad_mode 2 (pairs of groups): use num_group >= 2" if cfg["grad_mode"] == 2 else ": use >= 1")
        )
    batches = _need_batches(batches, "gcs")
    net = copy.deepcopy(model)
    if reinit:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, nn.Linear):
                    w = torch.empty(m.weight.shape, dtype=m.weight.dtype)
                    m.weight.copy_(nn.init.xavier_normal_(w, generator=gen))
    params = prunable_tensors(net, dense_classifier=dense_classifier, prune_bias=prune_bias, prune_norm=prune_norm)
    groups = gcs_groups(batches, cfg["num_group"], cfg["data_mode"])
    with scoring_state(net, params.values(), train_mode):
        vectors = gcs_vectors(net, groups, params, grad_mode=cfg["grad_mode"], loss_fn=loss_fn, temperature=temperature)
    return _normalise(gcs_combine(params, vectors, cfg["prune_mode"]), absolute_sum=True)


def _register_gcs(name: str, preset: str) -> None:
    def scorer(
        model: nn.Module,
        batches: Batches,
        *,
        loss_fn: LossFn = F.cross_entropy,
        preset: str = preset,
        data_mode: int | None = None,
        grad_mode: int | None = None,
        prune_mode: int | None = None,
        num_group: int | None = None,
        temperature: float = GRASP_TEMPERATURE,
        reinit: bool = True,
        seed: int = 0,
        train_mode: bool = True,
        dense_classifier: bool = False,
        prune_bias: bool = False,
        prune_norm: bool = False,
    ) -> WeightScores:
        return _gcs(
            model,
            batches,
            preset=preset,
            loss_fn=loss_fn,
            data_mode=data_mode,
            grad_mode=grad_mode,
            prune_mode=prune_mode,
            num_group=num_group,
            temperature=temperature,
            reinit=reinit,
            seed=seed,
            train_mode=train_mode,
            dense_classifier=dense_classifier,
            prune_bias=prune_bias,
            prune_norm=prune_norm,
        )

    scorer.__name__ = f"{name.replace('-', '_')}_scores"
    scorer.__doc__ = f"""GCS scorer, preset {preset!r} = {GCS_PRESETS[preset]} (each can be overridden).

    Works on a deep copy whose Linear weights are re-initialised (xavier normal, seeded by ``seed``)
    unless ``reinit`` is False, in train mode (batch norm on each group's batch statistics, as the
    reference scores a fresh model) unless ``train_mode`` is False (running statistics); the pruning
    set is split into ``num_group`` groups by ``data_mode`` (:func:`gcs_groups`), the vectors follow
    ``grad_mode`` (:func:`gcs_vectors`), the score follows ``prune_mode`` (:func:`gcs_combine`),
    normalised by ``|Σ| + eps``. The highest scores are kept.
    """
    WEIGHT_SCORERS.add(name, scorer)


for _name, _preset in zip(GCS_SCORERS, ("gcs", "gcs-group", "grasp", "snip"), strict=True):
    _register_gcs(_name, _preset)
