"""How channels pass through ATen ops: the op registry of the torch.export front-end.

Ops that take their weights as arguments (convolution, linear, the norms) have handlers of their
own here, reading the tensor names from the program's signature. Every other op has the semantics
of a torch function the fx front-end already follows (``aten.add.Tensor`` is ``torch.add``,
``aten.flatten.using_ints`` is ``torch.flatten``): those reuse the fx handler, so both front-ends
follow channels by one set of rules (:mod:`hwprune.graph_mapper.label_rules` underneath).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from hwprune.graph_mapper import attention_ops
from hwprune.graph_mapper import label_rules as rules
from hwprune.graph_mapper import ops as fx_ops
from hwprune.graph_mapper.atoms import Frozen
from hwprune.graph_mapper.export_mapper import ExportContext, placeholder_label
from hwprune.graph_mapper.ops import COMPOSITE_RESIZERS
from hwprune.graph_mapper.types import PARAM
from hwprune.layers import ZeroPaddedLayerNorm
from hwprune.registry import Registry

aten = torch.ops.aten
Handler = Callable[[ExportContext, fx.Node], Any]

# handlers keyed by ATen op packet (all overloads alike) or by Python function (operator.getitem)
ATEN_OPS: Registry[Handler] = Registry("ATen op handler")


def find_handler(target) -> Handler | None:
    """The handler of an op overload (``aten.conv2d.default``) or of its packet (``aten.conv2d``)."""
    return ATEN_OPS.find(target) or ATEN_OPS.find(getattr(target, "overloadpacket", None))


def visit(ctx: ExportContext, node: fx.Node):
    """The label of ``node``'s output (handlers record sites and unions as they go)."""
    if node.op == "placeholder":
        return placeholder_label(ctx, node)
    if node.op == "output":
        ctx.freeze_output(node)
        return None
    if node.op != "call_function":
        return ctx.unknown(node, f"{node.op} {node.name} in an exported program")
    return ctx.apply(node, find_handler(node.target))


def _arg(node: fx.Node, index: int, name: str, default=None):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _weights(ctx: ExportContext, node: fx.Node, slots: dict[str, int]) -> dict[str, str | None] | None:
    """Tensor names of the weight arguments; None when one is computed (not a parameter or buffer)."""
    names = {}
    for key, index in slots.items():
        arg = _arg(node, index, key)
        if arg is None:
            names[key] = None
            continue
        names[key] = ctx.tensor_name(arg)
        if names[key] is None:
            return None
    return names


# ----------------------------------------------------------------------------- weighted ops


@ATEN_OPS.register(aten.conv1d, aten.conv2d, aten.conv3d)
def conv(ctx: ExportContext, node: fx.Node):
    names = _weights(ctx, node, {"weight": 1, "bias": 2})
    if names is None:
        return ctx.unknown(node, f"convolution {node.name} with a computed weight")
    weight = ctx.tensors[names["weight"]]
    groups = _arg(node, 6, "groups", 1)
    c_out, c_in = weight.shape[0], weight.shape[1] * groups
    out_shape = ctx.shape(node)
    macs = weight.numel() * math.prod(out_shape[2:])
    vec = ctx.channel_labels(node, node.args[0], dim=1, size=c_in, what="conv input")
    out = rules.conv_sites(ctx, node, vec, names["weight"], names["bias"], groups, c_in, c_out, macs)
    return rules.channel_shaped(out, len(out_shape))


@ATEN_OPS.register(aten.linear)
def linear(ctx: ExportContext, node: fx.Node):
    names = _weights(ctx, node, {"weight": 1, "bias": 2})
    if names is None:
        return ctx.unknown(node, f"linear {node.name} with a computed weight")
    c_out, c_in = ctx.tensors[names["weight"]].shape
    out_shape = ctx.shape(node)
    macs = c_out * c_in * math.prod(out_shape[:-1][1:])
    vec = ctx.channel_labels(node, node.args[0], dim=-1, size=c_in, what="linear input")
    bias = (names["bias"], 0) if names["bias"] is not None else None
    out = rules.linear_sites(ctx, node, vec, names["weight"], 0, c_out, macs, bias)
    return rules.channel_shaped(out, len(out_shape), -1)


@ATEN_OPS.register(aten.addmm, aten.mm)
def addmm(ctx: ExportContext, node: fx.Node):
    """``addmm(bias, x, weight)`` / ``mm(x, weight)`` with a ``[in, out]`` parameter: a transposed dense layer.

    That is Hugging Face's Conv1D (GPT-2) as ATen sees it; ``mm`` of two activations is a matmul.
    """
    first = 1 if node.target.overloadpacket is aten.addmm else 0
    x, weight = node.args[first], node.args[first + 1]
    name = ctx.tensor_name(weight)
    if name is None:
        if first:
            return ctx.unknown(node, f"addmm {node.name} of two activations")
        return attention_ops.matmul(ctx, node)
    c_in, c_out = ctx.tensors[name].shape
    macs = c_in * c_out * math.prod(ctx.shape(node)[:-1]) // ctx.batch  # rows = batch x tokens
    vec = ctx.channel_labels(node, x, dim=-1, size=c_in, what="addmm input")
    bias_name = ctx.tensor_name(node.args[0]) if first else None
    if first and bias_name is None:
        return ctx.unknown(node, f"addmm {node.name} with a computed bias")
    out = rules.linear_sites(ctx, node, vec, name, 1, c_out, macs, (bias_name, 0) if bias_name else None)
    return rules.channel_shaped(out, len(ctx.shape(node)), -1)


def _norm(ctx: ExportContext, node: fx.Node, dim: int, slots: dict[str, int], what: str, conv_groups: int = 1):
    """A norm with per-channel tensors along ``dim``: tie them to the channels; (label, channel atoms)."""
    names = _weights(ctx, node, slots)
    if names is None:
        return ctx.unknown(node, f"{what} {node.name} with computed parameters"), None
    size = ctx.shape(node.args[0])[dim]
    vec = ctx.channel_labels(node, node.args[0], dim=dim, size=size, what=what)
    if vec is None:
        return Frozen(f"{what} {node.name} sees frozen channels"), None
    rules.param_sites(ctx, node, vec, [n for n in names.values() if n is not None], conv_groups)
    return ctx.label(node.args[0]), vec


BATCH_NORM = {"weight": 1, "bias": 2, "running_mean": 3, "running_var": 4}


@ATEN_OPS.register(aten.batch_norm, aten.instance_norm)
def batch_norm(ctx: ExportContext, node: fx.Node):
    return _norm(ctx, node, 1, BATCH_NORM, "batch norm")[0]


@ATEN_OPS.register(aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit_functional)
def native_batch_norm(ctx: ExportContext, node: fx.Node):
    """The decomposed form: (output, saved statistics...); only the output carries channels."""
    label = _norm(ctx, node, 1, BATCH_NORM, "batch norm")[0]
    return (label,) + (None,) * (len(ctx.shapes(node)) - 1)


@ATEN_OPS.register(aten.layer_norm)
def layer_norm(ctx: ExportContext, node: fx.Node):
    if len(_arg(node, 1, "normalized_shape")) != 1:
        return ctx.unknown(node, f"layer_norm {node.name} over several axes")
    if _arg(node, 2, "weight") is None:  # no tensor would carry the new channel count
        return ctx.unknown(node, f"layer_norm {node.name} without affine parameters")
    label, vec = _norm(ctx, node, -1, {"weight": 2, "bias": 3}, "layer norm")
    if vec is not None and not _own_layer_norm(ctx, node):
        ctx.atoms.mark_inexact(vec, f"layer_norm {node.name} normalises across channels")
    return label


def _own_layer_norm(ctx: ExportContext, node: fx.Node) -> bool:
    """The op is an ``nn.LayerNorm``'s own forward on its own weight: compaction makes it exact (ops.layer_norm)."""
    fqn, kind = _innermost_module(node)
    return kind == fx_ops.qualified_name(nn.LayerNorm) and ctx.tensor_name(_arg(node, 2, "weight")) == f"{fqn}.weight"


def _innermost_module(node: fx.Node) -> tuple[str | None, str | None]:
    """The attribute path and class name of the module whose forward ran ``node`` (None, None at top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None, None
    fqn, kind = list(stack.values())[-1]
    return fqn, fx_ops.qualified_name(kind) if isinstance(kind, type) else kind  # torch versions record either


@ATEN_OPS.register(aten.group_norm)
def group_norm(ctx: ExportContext, node: fx.Node):
    """Exact per channel (groups == channels); else inexact, each norm group keeping the same count."""
    if _arg(node, 2, "weight") is None:
        return ctx.unknown(node, f"group_norm {node.name} without affine parameters")
    groups, channels = _arg(node, 1, "num_groups"), ctx.shape(node.args[0])[1]
    per_channel = groups == channels
    label, vec = _norm(ctx, node, 1, {"weight": 2, "bias": 3}, "group norm", 1 if per_channel else groups)
    if vec is not None and not per_channel:
        ctx.atoms.mark_inexact(vec, f"group_norm {node.name} normalises across channels")
    return label


@ATEN_OPS.register(aten.prelu, aten._prelu_kernel)
def prelu(ctx: ExportContext, node: fx.Node):
    names = _weights(ctx, node, {"weight": 1})
    if names is None:
        return ctx.unknown(node, f"prelu {node.name} with a computed slope")
    if ctx.tensors[names["weight"]].numel() == 1:
        return ctx.label(node.args[0])
    return _norm(ctx, node, 1, {"weight": 1}, "prelu")[0]


@ATEN_OPS.register(aten.embedding)
def embedding(ctx: ExportContext, node: fx.Node):
    """A lookup table ``[rows, width]``: its columns are the output's channels (a tied output head shares them)."""
    names = _weights(ctx, node, {"weight": 0})
    if names is None:
        return ctx.unknown(node, f"embedding {node.name} with a computed table")
    weight = names["weight"]
    return rules.embedding_sites(ctx, node, weight, ctx.tensors[weight].shape[1], len(ctx.shape(node)))


# ----------------------------------------------------------------------------- ops with a torch twin


def _view(ctx: ExportContext, node: fx.Node):
    """``aten.view(x, sizes)``: torch's reshape, where an axis written ``-1`` is the one the code lets shrink.

    ``view(b, s, -1, head_dim)`` (Hugging Face attention) fixes the head width and infers the head count:
    channels are then removed in whole heads (``label_rules.shrink_whole_blocks``).
    """
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen) or label is None:
        return label
    sizes = _arg(node, 1, "size")
    inferred = next((d for d, n in enumerate(sizes) if isinstance(n, int) and n == -1), None) if sizes else None
    return rules.reshape(ctx.atoms, label, ctx.shape(node.args[0]), ctx.shape(node), f"view {node.name}", inferred)


def _slice(ctx: ExportContext, node: fx.Node):
    """``aten.slice(x, dim, start, end, step)``: the indexing ``x[:, ..., start:end:step]``."""
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen) or label is None:
        return label
    nd = len(ctx.shape(node.args[0]))
    dim = _arg(node, 1, "dim", 0) % nd
    start, end, step = _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1)
    size = ctx.shape(node.args[0])[dim]
    if start in (None, 0) and (end is None or end >= size) and step == 1:
        return label  # the whole axis
    idx = (slice(None),) * dim + (slice(start, min(end, size) if end is not None else None, step),)
    return fx_ops._index_tensor(ctx, node, label, idx)


def _select(ctx: ExportContext, node: fx.Node):
    """``aten.select(x, dim, index)``: the indexing ``x[:, ..., index]``."""
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen) or label is None:
        return label
    dim = node.args[1] % len(ctx.shape(node.args[0]))
    return fx_ops._index_tensor(ctx, node, label, (slice(None),) * dim + (node.args[2],))


def _chunk(ctx: ExportContext, node: fx.Node):
    """``aten.chunk(x, n, dim)``: n equal pieces in the module's code, so each piece keeps as many channels.

    The code asks for n pieces, not for sizes: with the same count kept in each, the compacted model's
    chunk cuts where the mask did. Unequal pieces (a count not divisible by n) are refused.
    """
    pieces = fx_ops.split(ctx, node)
    label = ctx.label(node.args[0])
    if not isinstance(label, np.ndarray) or isinstance(pieces, Frozen):
        return pieces
    in_shape = ctx.shape(node.args[0])
    dim = _arg(node, 2, "dim", 0) % len(in_shape)
    vec = ctx.channel_labels(node, node.args[0], dim=dim, size=in_shape[dim], what="chunk")
    if vec is None or len(np.unique(vec)) == 1:  # no channels along the chunked axis
        return pieces
    sizes = [s[dim] for s in ctx.shapes(node)]
    if len(set(sizes)) != 1:
        return ctx.unknown(node, f"chunk {node.name} into unequal pieces {sizes} along channels")
    ctx.keep_equal_per_block(vec.reshape(len(sizes), sizes[0]), f"chunk {node.name}")
    return pieces


def _no_tensor(ctx: ExportContext, node: fx.Node):
    return None


UNARY = (
    aten.relu, aten.relu_, aten.hardtanh, aten.hardtanh_, aten.relu6, aten.hardswish, aten.hardswish_,
    aten.hardsigmoid, aten.hardsigmoid_, aten.silu, aten.silu_, aten.sigmoid, aten.sigmoid_, aten.tanh, aten.tanh_,
    aten.gelu, aten.gelu_, aten.elu, aten.elu_, aten.selu, aten.selu_, aten.celu, aten.leaky_relu, aten.leaky_relu_,
    aten.mish, aten.mish_, aten.softplus, aten.dropout, aten.dropout_, aten.feature_dropout, aten.alpha_dropout,
    aten.clone, aten.contiguous, aten.alias, aten.detach, aten.detach_, aten.lift_fresh_copy, aten._to_copy, aten.to,
    aten.type_as, aten.neg, aten.exp, aten.abs, aten.sqrt, aten.rsqrt, aten.square, aten.clamp, aten.clamp_,
    aten.clamp_min, aten.clamp_max, aten.erf, aten.log, aten.reciprocal, aten.pow, aten.cos, aten.sin,
    aten.logical_not, aten.bitwise_not,
)  # fmt: skip
BINARY = (
    aten.add, aten.add_, aten.sub, aten.sub_, aten.mul, aten.mul_, aten.div, aten.div_, aten.maximum, aten.minimum,
    aten.rsub, aten.lt, aten.le, aten.gt, aten.ge, aten.eq, aten.ne, aten.logical_and, aten.logical_or,
    aten.bitwise_and, aten.bitwise_or,
)  # fmt: skip
RESHAPES = (
    aten.flatten, aten.squeeze, aten.squeeze_, aten.unsqueeze,
    aten.unsqueeze_, aten.unflatten,
)  # fmt: skip
SPATIAL = (
    aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.avg_pool1d, aten.avg_pool2d, aten.avg_pool3d,
    aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d, aten.upsample_nearest2d,
    aten.upsample_bilinear2d, aten.upsample_nearest1d, aten.upsample_nearest3d, aten.constant_pad_nd, aten.pad,
    aten.reflection_pad2d, aten.replication_pad2d,
)  # fmt: skip
TWINS: dict[Handler, tuple] = {
    fx_ops.unary: UNARY,
    fx_ops.binary: BINARY,
    fx_ops.where: (aten.where,),
    fx_ops.reshape: RESHAPES,
    _view: (aten.view, aten.reshape, aten._unsafe_view),
    fx_ops.spatial: SPATIAL,
    fx_ops.cat: (aten.cat, aten.concat, aten.concatenate),
    fx_ops.stack: (aten.stack,),
    fx_ops.permute: (aten.permute,),
    fx_ops.transpose: (aten.transpose, aten.swapaxes, aten.swapdims),
    fx_ops.split: (aten.split, aten.split_with_sizes),
    _chunk: (aten.chunk,),
    fx_ops.unbind: (aten.unbind,),
    fx_ops.getitem: (operator.getitem,),
    fx_ops.reduction: (aten.mean, aten.sum, aten.amax),
    fx_ops.softmax: (aten.softmax, aten._softmax, aten.log_softmax),
    fx_ops.expand: (aten.expand,),
    attention_ops.matmul: (aten.matmul, aten.bmm),
    attention_ops.scaled_dot_product_attention: (aten.scaled_dot_product_attention,),
    _slice: (aten.slice,),
    _select: (aten.select,),
    attention_ops.einsum: (aten.einsum,),  # (equation, [a, b]): the fx handler reads both forms
    _no_tensor: (aten.sym_size, aten.sym_numel, aten._assert_tensor_metadata, aten._assert_scalar),
}
for _handler, _ops in TWINS.items():
    ATEN_OPS.register(*_ops)(_handler)


# ----------------------------------------------------------------------------- modules mapped as one op


@dataclass
class Region:
    """The consecutive nodes of one call of a module whose class is mapped as one op (``MODULE_REGIONS``)."""

    module: str  # its attribute path (model.layers.0.input_layernorm)
    kind: str  # its class's qualified name
    nodes: list[fx.Node]


# handlers of whole module calls, keyed by the module class's qualified name: handler(ctx, region)
MODULE_REGIONS: Registry[Callable] = Registry("module region handler")


def module_regions(ctx: ExportContext, gm: fx.GraphModule) -> dict[str, Region]:
    """Node name -> its region, for every call of a module class with a region handler."""
    regions: dict[str, Region] = {}
    current: Region | None = None
    for node in gm.graph.nodes:
        fqn, kind = _innermost_module(node)
        if kind is None or MODULE_REGIONS.find(kind) is None:
            current = None
            continue
        if current is None or current.module != fqn:
            current = Region(fqn, kind, [])
        current.nodes.append(node)
        regions[node.name] = current
    return regions


def visit_region(ctx: ExportContext, region: Region) -> None:
    """Map a region with its handler; if the handler declines (returns False), node by node as usual."""
    if MODULE_REGIONS.find(region.kind)(ctx, region) is False:
        for node in region.nodes:
            ctx.labels[node.name] = visit(ctx, node)


CASTS = (aten.to, aten._to_copy, aten.alias, aten.clone, aten.contiguous)
RMS_NORMS = tuple(
    f"transformers.models.{module}.modeling_{module}.{prefix}RMSNorm"
    for module, prefix in (("llama", "Llama"), ("qwen2", "Qwen2"), ("mistral", "Mistral"))
) + ("transformers.models.t5.modeling_t5.T5LayerNorm",)


@MODULE_REGIONS.register(*RMS_NORMS)
def rms_norm(ctx: ExportContext, region: Region) -> bool:
    """``weight * x / sqrt(mean(x**2, -1) + eps)``: the channels pass, the weight follows them.

    The mean runs over channels, yet removing channels whose input is zero (what the masked model feeds it)
    is exact if the compacted norm divides by the original width: its compaction step scales ``eps`` and the
    weight so that the standard formula over the kept channels equals it (:func:`_resize_rms_norm`).
    """
    return _channel_norm(ctx, region, ("weight",))


@MODULE_REGIONS.register(fx_ops.qualified_name(ZeroPaddedLayerNorm))
def zero_padded_layer_norm(ctx: ExportContext, region: Region) -> bool:
    """A compacted LayerNorm (:mod:`hwprune.layers`) pruned again: it already divides by its original width."""
    return _channel_norm(ctx, region, ("weight", "bias"))


def _channel_norm(ctx: ExportContext, region: Region, params: tuple[str, ...]) -> bool:
    """A norm over the last axis that stays exact when zero channels go: its ``params`` follow the channels.

    Declines (mapped op by op: the mean freezes the channels) unless the region reads one activation and its
    own parameters, and only the output or casts of the input leave it.
    """
    inside = {n.name for n in region.nodes}
    own = {f"{region.module}.{p}" for p in params}
    outer = {a for n in region.nodes for a in n.all_input_nodes if a.name not in inside}
    activations = [a for a in outer if ctx.tensor_name(a) is None]
    used = {ctx.tensor_name(a) for a in outer if ctx.tensor_name(a)}
    if len(activations) != 1 or not used or not used <= own:
        return False
    x = activations[0]
    views = {x.name}
    for n in region.nodes:  # casts of the input are the input
        if getattr(n.target, "overloadpacket", None) in CASTS and n.args and getattr(n.args[0], "name", None) in views:
            views.add(n.name)
    escaping = [n for n in region.nodes if any(u.name not in inside for u in n.users)]
    if any(n.name not in views for n in escaping[:-1]) or not escaping:
        return False
    vec = ctx.channel_labels(region.nodes[-1], x, dim=-1, size=ctx.shape(x)[-1], what=f"norm {region.module}")
    label = ctx.label(x)
    if vec is not None:
        for name in sorted(used):
            ctx.site(name, 0, vec, PARAM, region.nodes[-1])
    for n in region.nodes:
        ctx.labels[n.name] = label if n.name in views or n is escaping[-1] else None
    return True


def _resize_rms_norm(m, shrunk) -> None:
    """Kept ``h`` of ``n`` channels: ``eps * n / h`` and the weight times ``sqrt(n / h)`` divide by ``n``, as before."""
    for _site, kept in shrunk.get("weight", []):
        n, h = len(kept), int(kept.sum())
        m.variance_epsilon = m.variance_epsilon * n / h
        with torch.no_grad():
            m.weight.mul_(math.sqrt(n / h))


for _kind in RMS_NORMS:
    COMPOSITE_RESIZERS.register(_kind)(_resize_rms_norm)
