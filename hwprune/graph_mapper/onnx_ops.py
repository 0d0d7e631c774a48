"""How channels pass through each ONNX op: the handler registry of the ONNX front-end.

A handler takes the mapping context (:class:`hwprune.graph_mapper.onnx_mapper.OnnxContext`) and an
ONNX node of the default domain and returns the label of its output (or a tuple, one per
output). It records the initializer axes it touches as sites and the size arguments compaction
must rewrite; the semantics are those of the fx handlers (:mod:`hwprune.graph_mapper.ops`),
shared through :mod:`hwprune.graph_mapper.label_rules`. An op without a handler, or a node a
handler cannot prove safe (a computed weight, a computed shape that touches channels), freezes
every channel reaching it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper

from hwprune.graph_mapper import label_rules as rules
from hwprune.graph_mapper.atoms import (
    Frozen,
    channel_vector,
    compact,
    fixed_label,
    labelled,
    right_align,
    varying_dims,
)
from hwprune.graph_mapper.rewrites import LayerNormRewrite, resized_by
from hwprune.registry import Registry

if TYPE_CHECKING:
    from hwprune.graph_mapper.onnx_mapper import OnnxContext

Handler = Callable[["OnnxContext", onnx.NodeProto], Any]

ONNX_OPS: Registry[Handler] = Registry("ONNX op handler")

DEFAULT_DOMAINS = ("", "ai.onnx")
# the input holding the sizes a "shape" rewrite record replaces (one entry per output axis)
SIZE_INPUT = {"Reshape": 1, "Expand": 1, "Resize": 3}


def op_label(node: onnx.NodeProto) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    """Set (or replace) attribute ``name`` of ``node``."""
    others = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(others + [helper.make_attribute(name, value)])


def node_resizer(node: onnx.NodeProto) -> Callable | None:
    """The compaction step of the handler of ``node``'s op type, if it has one."""
    handler = ONNX_OPS.find(op_label(node))
    return getattr(handler, "resize", None)


def input_at(node: onnx.NodeProto, i: int) -> str:
    """Name of input ``i`` ("" when an optional input is absent)."""
    return node.input[i] if len(node.input) > i else ""


def _what(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name}"


def _out_shape(ctx: OnnxContext, node: onnx.NodeProto) -> tuple[int, ...]:
    return ctx.shape(node.output[0])


def _operand_or_attr(ctx: OnnxContext, node: onnx.NodeProto, index: int, name: str):
    """An argument given as a constant input (newer opsets) or an attribute (older ones).

    Returns (value, ok): ok is False when the input exists but is computed, not constant.
    """
    source = input_at(node, index)
    if source:
        value = ctx.const(source)
        return value, value is not None
    value = attr(node, name)
    return (None if value is None else np.asarray(value)), True


# ----------------------------------------------------------------------------- weights


def _weights(ctx: OnnxContext, node: onnx.NodeProto, indices: tuple[int, ...]):
    """The initializer arrays at ``indices`` (None for absent optional inputs); None if one is computed."""
    arrays = []
    for i in indices:
        name = input_at(node, i)
        value = ctx.const(name) if name else None
        if name and value is None:
            return None
        arrays.append(value)
    return arrays


def _resize_conv(node: onnx.NodeProto, old: dict, new: dict) -> None:
    weight = node.input[1]
    if weight not in new:
        return
    groups, rows = int(attr(node, "group", 1)), old[weight][0]
    if groups > 1 and old[weight][1] == 1:  # depthwise: groups follow the kept channels
        set_attr(node, "group", new[weight][0] // (rows // groups))


@ONNX_OPS.register("Conv")
@resized_by(_resize_conv)
def conv(ctx: OnnxContext, node: onnx.NodeProto):
    arrays = _weights(ctx, node, (1, 2))
    if arrays is None:
        return ctx.unknown(node, f"Conv {node.name}: weight or bias is computed, not an initializer")
    weight = arrays[0]
    x, out_shape = node.input[0], _out_shape(ctx, node)
    groups, c_in = int(attr(node, "group", 1)), ctx.shape(x)[1]
    macs = weight.size * math.prod(out_shape[2:])
    vec = ctx.channel_labels(node, x, dim=1, size=c_in, what="conv input")
    bias = input_at(node, 2) or None
    out = rules.conv_sites(ctx, node, vec, node.input[1], bias, groups, c_in, weight.shape[0], macs)
    return rules.channel_shaped(out, len(out_shape))


@ONNX_OPS.register("ConvTranspose")
def conv_transpose(ctx: OnnxContext, node: onnx.NodeProto):
    """A transposed conv with one group: input channels on the weight's rows, outputs on its columns."""
    arrays = _weights(ctx, node, (1, 2))
    if arrays is None or int(attr(node, "group", 1)) != 1:
        return ctx.unknown(node, f"ConvTranspose {node.name}: grouped, or a computed weight")
    weight, x = arrays[0], node.input[0]
    in_shape, out_shape = ctx.shape(x), _out_shape(ctx, node)
    macs = weight.size * math.prod(in_shape[2:])
    vec = ctx.channel_labels(node, x, dim=1, size=in_shape[1], what="conv input")
    bias = (node.input[2], 0) if input_at(node, 2) else None
    out = rules.linear_sites(ctx, node, vec, node.input[1], 1, weight.shape[1], macs, bias)
    return rules.channel_shaped(out, len(out_shape))


def _dense_bias(ctx: OnnxContext, name: str, n_out: int):
    """Gemm's C as a producer site: one entry per output (None when absent or a scalar)."""
    if not name:
        return None
    value = ctx.const(name)
    if value is None:
        raise ValueError(f"bias {name} is computed")
    if value.size == 1:
        return None
    if value.size != n_out or value.shape[-1] != n_out:
        raise ValueError(f"bias {name} of shape {value.shape} is not one entry per output")
    return name, value.ndim - 1


@ONNX_OPS.register("Gemm")
def gemm(ctx: OnnxContext, node: onnx.NodeProto):
    """Gemm with an initializer B (a Linear layer): outputs on B's rows when transB, else on its columns."""
    a, b = node.input[:2]
    weight = ctx.const(b)
    if weight is None or ctx.const(a) is not None:
        return ctx.unknown(node, f"Gemm {node.name}: B is not an initializer (or A is)")
    out_axis = 0 if attr(node, "transB", 0) else 1
    n_out, n_in = weight.shape[out_axis], weight.shape[1 - out_axis]
    vec = ctx.channel_labels(node, a, dim=0 if attr(node, "transA", 0) else 1, size=n_in, what="Gemm input")
    bias = _dense_bias(ctx, input_at(node, 2), n_out)
    out = rules.linear_sites(ctx, node, vec, b, out_axis, n_out, weight.size, bias)
    return rules.channel_shaped(out, 2)


def _activation_product(ctx: OnnxContext, node: onnx.NodeProto, rule):
    """A product of two activations (attention scores, weighted values): the shared product rules."""
    a, b = node.input[:2]
    la, lb = ctx.label(a), ctx.label(b)
    if not (isinstance(la, np.ndarray) and isinstance(lb, np.ndarray)):
        return ctx.unknown(node, f"{_what(node)} multiplies an untracked or frozen tensor")
    if len(ctx.shape(a)) < 2 or len(ctx.shape(b)) < 2:
        return ctx.unknown(node, f"{_what(node)} of a vector")
    out = rule(right_align(la, len(ctx.shape(a))), right_align(lb, len(ctx.shape(b))))
    return ctx.unknown(node, f"{_what(node)}: channels on an axis it cannot follow") if out is None else out


@ONNX_OPS.register("MatMul")
def matmul(ctx: OnnxContext, node: onnx.NodeProto):
    """Activation @ 2-D initializer (a Linear layer exported as MatMul): outputs on the weight's columns.

    A product of two activations follows the shared rules: query/key dimensions meeting in attention
    scores are one channel, value dimensions pass through ``attn @ v``; anything else fails closed.
    """
    a, b = node.input
    weight, a_shape = ctx.const(b), ctx.shape(a)
    if weight is None and ctx.const(a) is None:
        out_nd = len(_out_shape(ctx, node))
        return _activation_product(ctx, node, lambda la, lb: rules.matmul(ctx.atoms, la, lb, out_nd, _what(node)))
    if weight is None or weight.ndim != 2 or ctx.const(a) is not None or len(a_shape) < 2:
        return ctx.unknown(node, f"MatMul {node.name} is not activation @ 2-D initializer")
    out_shape = _out_shape(ctx, node)
    macs = weight.size * math.prod(out_shape[1:-1])
    vec = ctx.channel_labels(node, a, dim=-1, size=weight.shape[0], what="MatMul input")
    out = rules.linear_sites(ctx, node, vec, b, 1, weight.shape[1], macs)
    return rules.channel_shaped(out, len(out_shape), -1)


# ----------------------------------------------------------------------------- normalisation


def _per_channel(ctx: OnnxContext, node: onnx.NodeProto, dim: int, params: tuple[int, ...], what: str):
    """A norm with one initializer entry per channel along ``dim``; returns the channel vector or Frozen."""
    x = node.input[0]
    size = ctx.shape(x)[dim]
    arrays = _weights(ctx, node, params)
    if arrays is None or any(a is not None and a.shape != (size,) for a in arrays):
        return ctx.unknown(node, f"{_what(node)}: a parameter is computed or not one entry per channel")[0]
    vec = ctx.channel_labels(node, x, dim=dim, size=size, what=what)
    if vec is None:
        return Frozen(f"{what} {node.name} sees frozen channels")
    rules.param_sites(ctx, node, vec, [input_at(node, i) for i in params if input_at(node, i)])
    return vec


@ONNX_OPS.register("BatchNormalization", "InstanceNormalization")
def batch_norm(ctx: OnnxContext, node: onnx.NodeProto):
    if attr(node, "training_mode", 0):
        return ctx.unknown(node, f"BatchNormalization {node.name} in training mode")
    vec = _per_channel(ctx, node, 1, tuple(range(1, len(node.input))), "batch norm")
    return vec if isinstance(vec, Frozen) else ctx.label(node.input[0])


@ONNX_OPS.register("LayerNormalization")
def layer_norm(ctx: OnnxContext, node: onnx.NodeProto):
    """LayerNorm over the last axis: exact once compacted.

    Compaction pads its input back to the original width with zeros (what the masked model feeds it) and
    slices the kept channels out of its output.
    """
    nd = len(ctx.shape(node.input[0]))
    if int(attr(node, "axis", -1)) % nd != nd - 1:
        return ctx.unknown(node, f"LayerNormalization {node.name} over several axes")
    if any(node.output[1:]):  # its mean and inverse deviation are read: they would be the padded norm's
        return ctx.unknown(node, f"LayerNormalization {node.name} with its statistics as outputs")
    vec = _per_channel(ctx, node, -1, (1, 2), "layer norm")
    if isinstance(vec, Frozen):
        return vec
    ctx.record_rewrite(node, LayerNormRewrite(vec, nd))
    return ctx.label(node.input[0])


def _resize_group_norm(node: onnx.NodeProto, old: dict, new: dict) -> None:
    scale = node.input[1]
    if scale in new and int(attr(node, "num_groups")) == old[scale][0]:  # one group per channel
        set_attr(node, "num_groups", new[scale][0])


@ONNX_OPS.register("GroupNormalization")
@resized_by(_resize_group_norm)
def group_norm(ctx: OnnxContext, node: onnx.NodeProto):
    """GroupNorm: exact per channel (groups == channels); else inexact, equal count kept per group."""
    arrays = _weights(ctx, node, (1, 2))
    x = node.input[0]
    channels, groups = ctx.shape(x)[1], int(attr(node, "num_groups"))
    per_channel = groups == channels
    if arrays is None or any(a is not None and a.shape != (channels,) for a in arrays):
        return ctx.unknown(node, f"GroupNormalization {node.name}: parameters are computed or per group")
    vec = ctx.channel_labels(node, x, dim=1, size=channels, what="group norm")
    if vec is None:
        return Frozen(f"group norm {node.name} sees frozen channels")
    params = [i for i in node.input[1:3] if i]
    rules.param_sites(ctx, node, vec, params, conv_groups=1 if per_channel else groups)
    if not per_channel:
        ctx.atoms.mark_inexact(vec, f"GroupNormalization {node.name} normalises across channels")
    return ctx.label(x)


# ----------------------------------------------------------------------------- elementwise

UNARY = (
    "Relu",
    "LeakyRelu",
    "Elu",
    "Selu",
    "Celu",
    "ThresholdedRelu",
    "Gelu",
    "Mish",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Softplus",
    "Softsign",
    "Erf",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Abs",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "Sin",
    "Cos",
    "Not",
    "IsNaN",
    "IsInf",
    "Clip",
    "Identity",
    "Dropout",
    "Cast",
    "CastLike",
)


@ONNX_OPS.register(*UNARY)
def unary(ctx: OnnxContext, node: onnx.NodeProto):
    """Per element (Clip's bounds, CastLike's target and Dropout's ratio are scalars)."""
    return ctx.label(node.input[0])


BINARY = (
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Pow",
    "Mod",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "PRelu",
    "Where",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "And",
    "Or",
    "Xor",
)


@ONNX_OPS.register(*BINARY)
def elementwise(ctx: OnnxContext, node: onnx.NodeProto):
    """Broadcast operands: positions that meet are pruned together; per-channel initializers ride along."""
    operands = [(ctx.label(i), ctx.shape(i)) for i in node.input if i]
    return rules.align(ctx.atoms, operands, _out_shape(ctx, node), _what(node))


# ----------------------------------------------------------------------------- structure


@ONNX_OPS.register("Concat")
def concat(ctx: OnnxContext, node: onnx.NodeProto):
    labels = [ctx.label(i) for i in node.input]
    shapes = [ctx.shape(i) for i in node.input]
    return rules.concat(ctx.atoms, labels, shapes, int(attr(node, "axis")), _out_shape(ctx, node), _what(node))


@ONNX_OPS.register("Split")
def split(ctx: OnnxContext, node: onnx.NodeProto):
    """Split along an axis; along a channel axis the piece sizes are rewritten on compaction."""
    x = node.input[0]
    label = ctx.label(x)
    if isinstance(label, Frozen):
        return tuple(label for _ in node.output)
    in_shape = ctx.shape(x)
    dim = int(attr(node, "axis", 0)) % len(in_shape)
    sizes = [ctx.shape(o)[dim] for o in node.output]
    result = rules.split(label, in_shape, dim, sizes)
    if result is None:
        return ctx.unknown(node, f"Split {node.name} of channels that vary along several axes")
    pieces, vec = result
    if vec is not None:
        if input_at(node, 1) and ctx.const(node.input[1]) is None:
            return ctx.unknown(node, f"Split {node.name} of channels into computed sizes")
        ctx.record_split_rewrite(node, vec, dim, sizes)
    return tuple(pieces)


def _slice_params(ctx: OnnxContext, node: onnx.NodeProto, nd: int):
    """(starts, ends, axes, steps) of a Slice, or None when one is computed (or given as attributes)."""
    if len(node.input) < 3:
        return None
    values = [ctx.const(input_at(node, i)) if input_at(node, i) else None for i in range(1, 5)]
    if values[0] is None or values[1] is None or any(input_at(node, i) and values[i - 1] is None for i in (3, 4)):
        return None
    starts, ends, axes, steps = values
    axes = np.arange(len(starts)) if axes is None else axes
    steps = np.ones(len(starts), dtype=np.int64) if steps is None else steps
    return starts, ends, [int(a) % nd for a in axes], steps


@ONNX_OPS.register("Slice")
def slice_(ctx: OnnxContext, node: onnx.NodeProto):
    """Slice; along a channel axis (step 1) the bounds are rewritten on compaction.

    The rewrite record names the entry of starts/ends (not the axis), as the fx record names the
    position in the index tuple.
    """
    x = node.input[0]
    label = ctx.label(x)
    out_shape = _out_shape(ctx, node)
    if isinstance(label, Frozen) or not labelled(label):
        return label if isinstance(label, Frozen) else fixed_label(len(out_shape))
    nd = len(ctx.shape(x))
    params = _slice_params(ctx, node, nd)
    if params is None:
        return ctx.unknown(node, f"Slice {node.name} of channels with computed bounds")
    label = right_align(label, nd)
    index, records = [slice(None)] * nd, []
    vary = varying_dims(label)
    for j, (start, end, axis, step) in enumerate(zip(*params, strict=True)):
        if label.shape[axis] == 1:
            continue
        if len(vary) > 1 and axis % nd != vary[-1]:  # an outer axis of a split channel axis never shrinks
            rules.tie_outer_axes(ctx.atoms, label, f"Slice {node.name}")
            index[axis] = slice(int(start), int(end), int(step))
            continue
        if int(step) != 1:
            return ctx.unknown(node, f"Slice {node.name} picks channels with a step")
        index[axis] = slice(int(start), int(end))
        records.append((j, np.moveaxis(label, axis, -1).reshape(-1, label.shape[axis])[0]))
    out = label[tuple(index)]
    if any(s not in (1, t) for s, t in zip(out.shape, out_shape, strict=True)):
        return ctx.unknown(node, f"Slice {node.name}: bounds the mapper cannot follow")
    if records:
        ctx.record_slice_rewrite(node, records)
    return compact(out)


@ONNX_OPS.register("Gather")
def gather(ctx: OnnxContext, node: onnx.NodeProto):
    """Gather along an axis; constant indices into a channel axis are remapped on compaction."""
    data, indices = node.input
    label = ctx.label(data)
    if isinstance(label, Frozen):
        return label
    in_shape, idx_shape = ctx.shape(data), ctx.shape(indices)
    nd, axis = len(in_shape), int(attr(node, "axis", 0)) % len(in_shape)
    label = right_align(label, nd)
    if label.shape[axis] == 1:
        return label.reshape(label.shape[:axis] + (1,) * len(idx_shape) + label.shape[axis + 1 :])
    idx, vec = ctx.const(indices), channel_vector(label, axis)
    vary = varying_dims(label)
    if idx is not None and len(vary) > 1 and axis != vary[-1]:
        # an outer axis of a split channel axis (q/k/v of a fused projection): it never shrinks
        rules.tie_outer_axes(ctx.atoms, label, f"Gather {node.name}")
        return compact(np.take(label, idx % in_shape[axis], axis=axis))
    if idx is None or vec is None or idx.ndim == 0:
        return ctx.unknown(node, f"Gather {node.name} picks channels with computed or scalar indices")
    picked = vec[idx % in_shape[axis]]
    out = picked.reshape((1,) * axis + picked.shape + (1,) * (nd - axis - 1))
    out = compact(out)
    rules.tie_outer_axes(ctx.atoms, out, f"Gather {node.name}")
    ctx.record_slice_rewrite(node, [(axis, vec)])
    return out


@ONNX_OPS.register("GatherND")
def gather_nd(ctx: OnnxContext, node: onnx.NodeProto):
    """GatherND over leading axes without channels (how the dynamo exporter replicates pixels in an adaptive pool)."""
    data, indices = node.input
    label = ctx.label(data)
    if isinstance(label, Frozen):
        return label
    idx_shape = ctx.shape(indices)
    label = right_align(label, len(ctx.shape(data)))
    first, depth = int(attr(node, "batch_dims", 0)), idx_shape[-1]
    if any(label.shape[d] > 1 for d in range(first, first + depth)):
        return ctx.unknown(node, f"GatherND {node.name} picks channels")
    return label.reshape(label.shape[:first] + (1,) * (len(idx_shape) - 1 - first) + label.shape[first + depth :])


@ONNX_OPS.register("Reshape")
def reshape(ctx: OnnxContext, node: onnx.NodeProto):
    """Reshape to a constant shape, rewritten on compaction; a computed one touching channels freezes."""
    x = node.input[0]
    label = ctx.label(x)
    out_shape = _out_shape(ctx, node)
    if isinstance(label, Frozen) or not labelled(label):
        return label if isinstance(label, Frozen) else fixed_label(len(out_shape))
    if ctx.const(node.input[1]) is None:
        return ctx.unknown(node, f"Reshape {node.name} of channels to a computed shape")
    out = rules.reshape(ctx.atoms, label, ctx.shape(x), out_shape, f"Reshape {node.name}")
    ctx.record_shape_rewrite(node, out)
    return out


@ONNX_OPS.register("Flatten", "Squeeze", "Unsqueeze")
def view(ctx: OnnxContext, node: onnx.NodeProto):
    """Reshapes whose arguments are axes, not sizes: nothing to rewrite on compaction."""
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    return rules.reshape(ctx.atoms, label, ctx.shape(node.input[0]), _out_shape(ctx, node), _what(node))


@ONNX_OPS.register("Transpose")
def transpose(ctx: OnnxContext, node: onnx.NodeProto):
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    nd = len(ctx.shape(node.input[0]))
    perm = attr(node, "perm") or list(reversed(range(nd)))
    return np.transpose(right_align(label, nd), perm)


@ONNX_OPS.register("Expand")
def expand(ctx: OnnxContext, node: onnx.NodeProto):
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    out = right_align(label, len(_out_shape(ctx, node)))
    if labelled(out):
        if ctx.const(node.input[1]) is None:
            return ctx.unknown(node, f"Expand {node.name} of channels to a computed shape")
        ctx.record_shape_rewrite(node, out)
    return out


@ONNX_OPS.register("Tile")
def tile(ctx: OnnxContext, node: onnx.NodeProto):
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    reps = ctx.const(node.input[1])
    if reps is None:
        return ctx.unknown(node, f"Tile {node.name} with computed repeats")
    return rules.tile(label, [int(r) for r in reps])


@ONNX_OPS.register("DepthToSpace")
def depth_to_space(ctx: OnnxContext, node: onnx.NodeProto):
    """Blocks of r*r input channels become one output channel: consecutive (CRD) or strided by C (DCR)."""
    r, x = int(attr(node, "blocksize")), node.input[0]
    crd = attr(node, "mode", b"DCR") in (b"CRD", "CRD")
    vec = ctx.channel_labels(node, x, dim=1, size=ctx.shape(x)[1], what="depth to space")
    if vec is None:
        return Frozen(f"depth to space {node.name} sees frozen channels")
    blocks = vec.reshape(-1, r * r) if crd else vec.reshape(r * r, -1).T
    out = rules.merge_blocks(ctx.atoms, blocks, f"DepthToSpace {node.name}")
    return out if isinstance(out, Frozen) else rules.channel_shaped(out, 4)


@ONNX_OPS.register("SpaceToDepth")
def space_to_depth(ctx: OnnxContext, node: onnx.NodeProto):
    """Input channel c becomes output channels k*C + c, one per block offset k."""
    r, x = int(attr(node, "blocksize")), node.input[0]
    vec = ctx.channel_labels(node, x, dim=1, size=ctx.shape(x)[1], what="space to depth")
    if vec is None:
        return Frozen(f"space to depth {node.name} sees frozen channels")
    return rules.channel_shaped(np.tile(vec, r * r), 4)


# ----------------------------------------------------------------------------- spatial, reductions


@ONNX_OPS.register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def spatial(ctx: OnnxContext, node: onnx.NodeProto):
    """Pooling and resizing act per channel (axis 1)."""
    x = node.input[0]
    vec = ctx.channel_labels(node, x, dim=1, size=ctx.shape(x)[1], what="pooling input")
    if vec is None:
        return Frozen(f"spatial op {node.name} sees channels varying along space")
    return compact(rules.channel_shaped(vec, len(_out_shape(ctx, node))))


@ONNX_OPS.register("Resize", "Upsample")
def resize(ctx: OnnxContext, node: onnx.NodeProto):
    """Resize with scales of 1 on the batch and channel axes, or with sizes (rewritten on compaction)."""
    out = spatial(ctx, node)
    if isinstance(out, Frozen) or not labelled(out):
        return out
    scales_at = 1 if node.op_type == "Upsample" or ctx.opset < 11 else 2
    sizes, scales = input_at(node, 3) if scales_at == 2 else "", input_at(node, scales_at)
    axes = attr(node, "axes")
    if axes is not None and 1 in [a % len(_out_shape(ctx, node)) for a in axes]:
        return ctx.unknown(node, f"Resize {node.name} resizes the channel axis")
    if sizes:
        if ctx.const(sizes) is None:
            return ctx.unknown(node, f"Resize {node.name} of channels to computed sizes")
        if axes is None:
            ctx.record_shape_rewrite(node, right_align(out, len(_out_shape(ctx, node))))
        return out
    value = ctx.const(scales) if scales else None
    if value is None or (axes is None and np.any(value[:2] != 1)):
        return ctx.unknown(node, f"Resize {node.name} with computed scales or scales on channels")
    return out


@ONNX_OPS.register("Pad")
def pad(ctx: OnnxContext, node: onnx.NodeProto):
    """Padding along axes where channels do not vary."""
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    nd = len(ctx.shape(node.input[0]))
    pads, ok = _operand_or_attr(ctx, node, 1, "pads")
    axes, axes_ok = _operand_or_attr(ctx, node, 3, "axes")
    if not ok or not axes_ok or pads is None:
        return ctx.unknown(node, f"Pad {node.name} with computed pads")
    axes = list(range(nd)) if axes is None else [int(a) % nd for a in axes]
    label = right_align(label, nd)
    pads = np.asarray(pads).reshape(2, len(axes))
    if any(label.shape[a] > 1 and pads[:, j].any() for j, a in enumerate(axes)):
        return ctx.unknown(node, f"Pad {node.name} pads the channel axis")
    return label


REDUCTIONS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceSumSquare",
)


@ONNX_OPS.register(*REDUCTIONS)
def reduction(ctx: OnnxContext, node: onnx.NodeProto):
    """Over non-channel axes the channels pass; over channels they freeze."""
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    nd = len(ctx.shape(node.input[0]))
    axes, ok = _operand_or_attr(ctx, node, 1, "axes")
    if not ok:
        return ctx.unknown(node, f"{_what(node)} over computed axes")
    if axes is None or axes.size == 0:
        if attr(node, "noop_with_empty_axes", 0):
            return label
        axes = np.arange(nd)
    keep = bool(attr(node, "keepdims", 1))
    return rules.reduce(ctx.atoms, label, nd, axes.tolist(), keep, len(_out_shape(ctx, node)), _what(node))


@ONNX_OPS.register("ArgMax", "ArgMin")
def arg_reduction(ctx: OnnxContext, node: onnx.NodeProto):
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    nd = len(ctx.shape(node.input[0]))
    keep = bool(attr(node, "keepdims", 1))
    return rules.reduce(
        ctx.atoms, label, nd, [int(attr(node, "axis", 0))], keep, len(_out_shape(ctx, node)), _what(node)
    )


@ONNX_OPS.register("Einsum")
def einsum(ctx: OnnxContext, node: onnx.NodeProto):
    """Two-operand Einsum of activations, with the rules of MatMul."""
    equation = attr(node, "equation")
    equation = equation.decode() if isinstance(equation, bytes) else equation
    if len(node.input) != 2 or any(ctx.const(x) is not None for x in node.input):
        return ctx.unknown(node, f"Einsum {node.name}: only products of two activations are followed")
    return _activation_product(ctx, node, lambda la, lb: rules.einsum(ctx.atoms, equation, la, lb, _what(node)))


@ONNX_OPS.register("Softmax", "LogSoftmax", "Hardmax")
def softmax(ctx: OnnxContext, node: onnx.NodeProto):
    """Normalises along one axis (opset >= 13) or over every axis from ``axis`` on (older opsets)."""
    label = ctx.label(node.input[0])
    if isinstance(label, Frozen):
        return label
    nd = len(ctx.shape(node.input[0]))
    if ctx.opset >= 13:
        dims = [int(attr(node, "axis", -1))]
    else:
        dims = list(range(int(attr(node, "axis", 1)) % nd, nd))
    return rules.normalise_over(ctx.atoms, label, nd, dims, _what(node))


@ONNX_OPS.register("Shape", "Size")
def shape_of(ctx: OnnxContext, node: onnx.NodeProto):
    """Shape arithmetic carries no channels (sizes that touch channels are checked where they are used)."""
    return fixed_label(len(_out_shape(ctx, node)))
