"""Equivalence checks: the compacted model against the masked model, ONNX against the compacted.

A check is only as strong as its reference. :func:`max_rel_diff` treats any non-finite value as a
mismatch (never as zero), :func:`vacuity` says when a reference cannot tell right from wrong (zero,
constant or non-finite), :func:`check_finite` refuses non-finite weights before anything is
compacted, :func:`randomize_for_check` gives a copy of a model informative values, so that a
check on fresh init weights (every BatchNorm scale 1, shift 0) still sees a wrong channel, and
:func:`calibrate_for_check` rescales that copy so that a wrong channel in an early layer still
reaches the output of a deep network.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import fx
from torch.nn.modules.batchnorm import _NormBase

from hwprune.errors import VerificationError

DEFAULT_TOLERANCE = 1e-4


def _array(x) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)


def max_rel_diff(actual, reference) -> float:
    """Max |actual - reference| / max |reference| over all outputs (absolute when the reference is 0).

    Any non-finite value that is not matched by the same value in the other (NaN never matches) gives
    ``inf``, as do different output structures or shapes: a failed comparison never reads as 0.
    """
    actual, reference = [_array(a) for a in _flat(actual)], [_array(r) for r in _flat(reference)]
    if len(actual) != len(reference):
        return float("inf")
    worst = 0.0
    for a, r in zip(actual, reference, strict=True):
        if a.shape != r.shape:
            return float("inf")
        finite_a, finite_r = np.isfinite(a), np.isfinite(r)
        if not (finite_a.all() and finite_r.all()):
            same = ~finite_a & ~finite_r & (a == r)  # the same infinity in both places
            if ((~finite_a | ~finite_r) & ~same).any():
                return float("inf")
            a, r = a[finite_a], r[finite_r]  # both finite at the same places here
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


def nonfinite_summary(x) -> str | None:
    """'3 NaN, 1 inf of 40 values' when ``x`` (a tensor, array or nest of them) has non-finite values."""
    arrays = [_array(a) for a in _flat(x)]
    nan = sum(int(np.isnan(a).sum()) for a in arrays)
    inf = sum(int(np.isinf(a).sum()) for a in arrays)
    if not nan and not inf:
        return None
    return f"{nan} NaN, {inf} inf of {sum(a.size for a in arrays)} values"


def vacuity(reference, tolerance: float = DEFAULT_TOLERANCE) -> str | None:
    """Why a comparison against ``reference`` could not fail, or None when it is informative.

    A reference is vacuous when it is empty, not finite, zero everywhere, or constant (its spread
    is within ``tolerance`` of its magnitude, so a relative check sees nothing of what varies).
    """
    arrays = [_array(a).ravel() for a in _flat(reference)]
    values = np.concatenate(arrays) if arrays else np.zeros(0)
    if values.size == 0:
        return "empty"
    bad = nonfinite_summary(values)
    if bad:
        return f"not finite ({bad})"
    scale = float(np.abs(values).max())
    if scale == 0:
        return "zero everywhere"
    if float(values.max() - values.min()) <= tolerance * scale:
        return f"constant ({len(values)} values all equal to {float(values[0]):.6g})"
    return None


def check_finite(model: torch.nn.Module, what: str) -> None:
    """Refuse a model with a non-finite parameter or floating-point buffer, naming the first one."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    for name, t in tensors:
        if t.is_floating_point() or t.is_complex():
            data = t.detach()
            if not bool(torch.isfinite(data).all()):
                kind = "parameter" if isinstance(t, torch.nn.Parameter) else "buffer"
                raise VerificationError(
                    f"{what}: {kind} {name} has non-finite values ({nonfinite_summary(data)}); no equivalence "
                    "can be proved on it: fix or retrain the weights before pruning"
                )


def randomize_for_check(model: torch.nn.Module, seed: int = 0, buffers: Iterable[str] = ()) -> torch.nn.Module:
    """Give every parameter and norm statistic random, well-scaled values (in place).

    Fresh models are often degenerate for an equivalence check (ViT's zero-initialised head outputs
    zeros whatever the body computes; BatchNorm at init is the identity on every channel, so keeping
    the wrong rows of it changes nothing); this makes every channel matter. Every parameter changes:
    matrices and kernels (classifier included) get ``randn / sqrt(fan_in)``, vectors named ``weight``
    (norm affine) values in [0.5, 1.5), every other vector or scalar (biases, layer scale such as
    timm's ``gamma``, tokens) ``0.1 * randn``; running means ``0.1 * randn``, running variances and
    the floating-point buffers named in ``buffers`` (any other per-channel buffer) [0.5, 1.5).
    """
    gen = torch.Generator().manual_seed(seed)
    extra = set(buffers)
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
            if not b.is_floating_point():
                continue
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
            elif name.endswith("running_var") or name in extra:
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
    return model


def calibrate_for_check(gm: torch.nn.Module, example) -> dict[str, float]:
    """Rescale a randomised GraphModule, in place, so that every layer passes on activations of order one.

    Random weights do not match the activations they meet: the signal shrinks (or grows) layer after
    layer, and an error in an early layer can reach the output below any tolerance (EfficientNet's
    stem and SqueezeNet's first bias: 1e-8 and 1e-5 at the output). In one pass over ``example``, in
    execution order: each convolution or linear layer (module or functional) has weight and bias
    divided by the root mean square of its output; each BatchNorm (module or functional, as timm's
    BatchNormAct2d traces) has its running mean multiplied by ``sqrt(s)`` and running variance by ``s``,
    the mean square of its whole input, keeping the random per-channel values that
    :func:`randomize_for_check` drew. Every layer then has a gain near one, so an error keeps its
    relative size, and channels still differ. One scale per tensor, not per channel: normalising each
    channel on a small batch amplifies the channels that happen to be small, and rounding noise with
    them. Returns the factor applied to each tensor, by name (to scale another copy the same way).
    """
    names = {id(t): n for n, t in [*gm.named_parameters(), *gm.named_buffers()]}
    factors: dict[str, float] = {}

    def scale(t, factor: float) -> None:
        if isinstance(t, torch.Tensor) and id(t) in names and names[id(t)] not in factors:
            t.mul_(factor)
            factors[names[id(t)]] = factor

    def mean_square(x) -> float:
        return float(x.detach().double().pow(2).mean()) if isinstance(x, torch.Tensor) and x.numel() else 0.0

    def norm(x, running_mean, running_var) -> None:
        if not isinstance(running_var, torch.Tensor) or names.get(id(running_var)) in factors:
            return
        s = mean_square(x)
        if 1e-24 < s < float("inf"):
            scale(running_mean, s**0.5)
            scale(running_var, s)

    def affine(out, weight, bias):
        if not isinstance(weight, torch.Tensor) or names.get(id(weight)) in factors:
            return out
        s = mean_square(out)
        if not 1e-24 < s < float("inf"):
            return out
        scale(weight, s**-0.5)
        scale(bias, s**-0.5)
        return out * s**-0.5  # the layer is linear in (weight, bias)

    class Calibrator(fx.Interpreter):
        def call_module(self, target, args, kwargs):
            m = self.fetch_attr(target)
            if isinstance(m, _NormBase) and args:
                norm(args[0], m.running_mean, m.running_var)
            out = super().call_module(target, args, kwargs)
            if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                out = affine(out, m.weight, m.bias)
            return out

        def call_function(self, target, args, kwargs):
            values = _arguments(target, args, kwargs)
            if target is torch.nn.functional.batch_norm:
                norm(values.get("input"), values.get("running_mean"), values.get("running_var"))
            out = super().call_function(target, args, kwargs)
            if target in _AFFINE:
                out = affine(out, values.get("weight"), values.get("bias"))
            return out

    def pre_hook(module, args):
        if args:
            norm(args[0], module.running_mean, module.running_var)

    def post_hook(module, args, out):
        return affine(out, module.weight, module.bias)

    with torch.no_grad():
        if isinstance(gm, fx.GraphModule):
            Calibrator(gm.eval()).run(example)
        else:  # the user's own module (export front-end): the same steps as hooks on its layers
            handles = []
            for m in gm.modules():
                if isinstance(m, _NormBase):
                    handles.append(m.register_forward_pre_hook(pre_hook))
                elif isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)):
                    handles.append(m.register_forward_hook(post_hook))
            try:
                gm.eval()(example)
            finally:
                for h in handles:
                    h.remove()
    return factors


_AFFINE = (
    torch.nn.functional.linear,
    torch.nn.functional.conv1d,
    torch.nn.functional.conv2d,
    torch.nn.functional.conv3d,
)
_PARAMETERS = {
    torch.nn.functional.batch_norm: ("input", "running_mean", "running_var", "weight", "bias"),
    torch.nn.functional.linear: ("input", "weight", "bias"),
    torch.nn.functional.conv1d: ("input", "weight", "bias"),
    torch.nn.functional.conv2d: ("input", "weight", "bias"),
    torch.nn.functional.conv3d: ("input", "weight", "bias"),
}


def _arguments(target, args, kwargs) -> dict:
    """The leading arguments of a batch_norm / linear / conv call by name (empty for other calls)."""
    names = _PARAMETERS.get(target, ())
    return {n: args[i] if i < len(args) else kwargs.get(n) for i, n in enumerate(names)}
