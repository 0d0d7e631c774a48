"""How channels pass through each op kind: the op registry of the fx front-end.

A handler takes the mapping context and an fx node and returns the node's label (see
:mod:`hwprune.graph_mapper.atoms`). It records the parameter axes it touches as sites and unions
atoms that must be pruned together. An op with no handler freezes every group it touches, naming
the op: the mapper never guesses.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from hwprune.graph_mapper import label_rules as rules
from hwprune.graph_mapper.atoms import Frozen, compact, labelled, right_align, varying_dims
from hwprune.graph_mapper.rewrites import LayerNormRewrite, resized_by
from hwprune.graph_mapper.types import PARAM
from hwprune.layers import ZeroPaddedLayerNorm, zero_padded_layer_norm
from hwprune.registry import Registry

if TYPE_CHECKING:
    from hwprune.graph_mapper.fx_mapper import MapContext

Handler = Callable[["MapContext", fx.Node], Any]


# handlers keyed by module type, function, or tensor-method name; duplicates are errors
OPS: Registry[Handler] = Registry("fx op handler")


def qualified_name(cls: type) -> str:
    """``transformers.pytorch_utils.Conv1D``: how registries name a class of a library hwprune does not import."""
    return f"{cls.__module__}.{cls.__qualname__}"


def find_for_type(registry: Registry, cls: type):
    """The entry registered for exactly this class: by the class itself or by its qualified name."""
    return registry.find(cls) or registry.find(qualified_name(cls))


def type_handler(cls: type) -> Handler | None:
    """The handler registered for exactly this module type (see :func:`find_for_type`)."""
    return find_for_type(OPS, cls)


# compaction steps of composite modules that are traced through, not mapped as one op, but keep a size
# in an attribute their code reads (Hugging Face's GPT2Attention.split_size): keyed like OPS
COMPOSITE_RESIZERS: Registry[Callable] = Registry("composite module resizer")


def module_resizer(module: nn.Module) -> Callable | None:
    """The compaction step of ``module``'s type (or its nearest registered base type), if any.

    A leaf module's is its handler's (``resized_by``); a composite module's is in ``COMPOSITE_RESIZERS``.
    """
    for cls in type(module).__mro__:
        handler = type_handler(cls)
        if handler is not None:
            return getattr(handler, "resize", None)
        resize = find_for_type(COMPOSITE_RESIZERS, cls)
        if resize is not None:
            return resize
    return None


def find_handler(node: fx.Node, module: nn.Module | None) -> Handler | None:
    """A module call goes to its exact type's handler (a subclass may compute differently), others to their target's."""
    return type_handler(type(module)) if node.op == "call_module" else OPS.find(node.target)


def op_name(node: fx.Node, module: nn.Module | None = None) -> str:
    if node.op == "call_module":
        return type(module).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    return getattr(node.target, "__name__", str(node.target))


def _what(ctx: MapContext, node: fx.Node) -> str:
    """How reasons name a node: its op and its name."""
    return f"{op_name(node, ctx.module_or_none(node))} {node.name}"


# ----------------------------------------------------------------------------- weights


def _conv(ctx: MapContext, node: fx.Node) -> np.ndarray:
    m = ctx.module(node)
    name, out_shape = node.target, ctx.shape(node)
    macs = m.weight.numel() * math.prod(out_shape[2:])
    vec = ctx.channel_labels(node, node.args[0], dim=1, size=m.in_channels, what="conv input")
    bias = f"{name}.bias" if m.bias is not None else None
    out = rules.conv_sites(ctx, node, vec, f"{name}.weight", bias, m.groups, m.in_channels, m.out_channels, macs)
    return rules.channel_shaped(out, len(out_shape))


def _linear(ctx: MapContext, node: fx.Node) -> np.ndarray:
    m = ctx.module(node)
    name, out_shape = node.target, ctx.shape(node)
    macs = m.weight.numel() * math.prod(out_shape[1:-1])
    vec = ctx.channel_labels(node, node.args[0], dim=-1, size=m.in_features, what="linear input")
    bias = (f"{name}.bias", 0) if m.bias is not None else None
    out = rules.linear_sites(ctx, node, vec, f"{name}.weight", 0, m.out_features, macs, bias)
    return rules.channel_shaped(out, len(out_shape), -1)


def _norm_params(ctx: MapContext, node: fx.Node, vec: np.ndarray, names: tuple[str, ...], conv_groups: int = 1):
    m = ctx.module(node)
    tensors = [f"{node.target}.{attr}" for attr in names if getattr(m, attr, None) is not None]
    rules.param_sites(ctx, node, vec, tensors, conv_groups)


def _per_channel(ctx: MapContext, node: fx.Node, dim: int, params: tuple[str, ...], what: str):
    """A norm or activation with one parameter entry per channel along ``dim``."""
    size = ctx.shape(node.args[0])[dim]
    vec = ctx.channel_labels(node, node.args[0], dim=dim, size=size, what=what)
    if vec is None:
        return Frozen(f"{what} {node.target} sees frozen channels")
    _norm_params(ctx, node, vec, params)
    return ctx.label(node.args[0]), vec


def _resize_conv(m: nn.modules.conv._ConvNd, shrunk) -> None:
    out_c = m.weight.shape[0]
    if m.groups > 1 and m.in_channels == m.groups:  # depthwise: one input channel per group
        mult = m.out_channels // m.groups
        m.in_channels = m.groups = out_c // mult
    else:
        m.in_channels = m.weight.shape[1] * m.groups
    m.out_channels = out_c


@OPS.register(nn.Conv1d, nn.Conv2d, nn.Conv3d)
@resized_by(_resize_conv)
def conv(ctx: MapContext, node: fx.Node):
    return _conv(ctx, node)


def _resize_linear(m: nn.Linear, shrunk) -> None:
    m.out_features, m.in_features = m.weight.shape


@OPS.register(nn.Linear)
@resized_by(_resize_linear)
def linear(ctx: MapContext, node: fx.Node):
    return _linear(ctx, node)


def _resize_embedding(m: nn.Embedding, shrunk) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@OPS.register(nn.Embedding)
@resized_by(_resize_embedding)
def embedding(ctx: MapContext, node: fx.Node):
    """A lookup table ``[rows, width]``: its columns are the output's channels."""
    width = ctx.module(node).embedding_dim
    return rules.embedding_sites(ctx, node, f"{node.target}.weight", width, len(ctx.shape(node)))


def _resize_conv_transpose(m: nn.modules.conv._ConvTransposeNd, shrunk) -> None:
    m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups


@OPS.register(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
@resized_by(_resize_conv_transpose)
def conv_transpose(ctx: MapContext, node: fx.Node):
    """A transposed conv with one group: inputs on the weight's rows, outputs on its columns."""
    m = ctx.module(node)
    if m.groups != 1:
        return ctx.unknown(node, f"{type(m).__name__} {node.target} with {m.groups} groups")
    name, in_shape, out_shape = node.target, ctx.shape(node.args[0]), ctx.shape(node)
    macs = m.weight.numel() * math.prod(in_shape[2:])
    vec = ctx.channel_labels(node, node.args[0], dim=1, size=m.in_channels, what="transposed conv input")
    bias = (f"{name}.bias", 0) if m.bias is not None else None
    out = rules.linear_sites(ctx, node, vec, f"{name}.weight", 1, m.out_channels, macs, bias)
    return rules.channel_shaped(out, len(out_shape))


BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


def _resize_batch_norm(m: nn.modules.batchnorm._NormBase, shrunk) -> None:
    m.num_features = (m.weight if m.weight is not None else m.running_mean).shape[0]


@OPS.register(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.InstanceNorm2d)
@resized_by(_resize_batch_norm)
def batch_norm(ctx: MapContext, node: fx.Node):
    out = _per_channel(ctx, node, 1, BN_PARAMS, "batch norm")
    return out if isinstance(out, Frozen) else out[0]


def _resize_group_norm(m: nn.GroupNorm, shrunk) -> None:
    if m.num_groups == m.num_channels:  # per-channel: one group per kept channel
        m.num_groups = m.weight.shape[0]
    m.num_channels = m.weight.shape[0]


@OPS.register(nn.GroupNorm)
@resized_by(_resize_group_norm)
def group_norm(ctx: MapContext, node: fx.Node):
    """GroupNorm: exact per channel (groups == channels); else inexact, with a block constraint.

    Each norm group must then keep the same number of channels, like the groups of a grouped conv.
    """
    m = ctx.module(node)
    per_channel = m.num_groups == m.num_channels
    if not m.affine:  # no tensor would carry the new channel count to its num_groups/num_channels
        return ctx.unknown(node, f"GroupNorm {node.target} without affine parameters")
    size = ctx.shape(node.args[0])[1]
    vec = ctx.channel_labels(node, node.args[0], dim=1, size=size, what="group norm")
    if vec is None:
        return Frozen(f"group norm {node.target} sees frozen channels")
    _norm_params(ctx, node, vec, ("weight", "bias"), 1 if per_channel else m.num_groups)
    if not per_channel:
        ctx.atoms.mark_inexact(vec, f"GroupNorm {node.target} normalises across channels")
    return ctx.label(node.args[0])


def _resize_layer_norm(m: nn.LayerNorm, shrunk) -> nn.LayerNorm | None:
    """A plain LayerNorm becomes a :class:`ZeroPaddedLayerNorm` over its original width (exact).

    A subclass with code of its own (torchvision's LayerNorm2d, opted in as inexact) only changes its size.
    """
    width = m.normalized_shape[0]
    m.normalized_shape = (m.weight.shape[0],)
    if type(m) is nn.LayerNorm and m.weight.shape[0] != width:
        return ZeroPaddedLayerNorm.from_layer_norm(m, width)
    return None


@OPS.register(nn.LayerNorm, ZeroPaddedLayerNorm)
@resized_by(_resize_layer_norm)
def layer_norm(ctx: MapContext, node: fx.Node):
    """Exact: compacted into a :class:`ZeroPaddedLayerNorm`.

    Registered for these two classes only: a subclass with code of its own is traced through to its call.
    """
    m = ctx.module(node)
    if len(m.normalized_shape) != 1:
        return ctx.unknown(node, f"LayerNorm {node.target} over several axes")
    if m.weight is None:  # no tensor would carry the new channel count to its normalized_shape
        return ctx.unknown(node, f"LayerNorm {node.target} without affine parameters")
    out = _per_channel(ctx, node, -1, ("weight", "bias"), "layer norm")
    return out if isinstance(out, Frozen) else out[0]


def _resize_prelu(m: nn.PReLU, shrunk) -> None:
    m.num_parameters = m.weight.shape[0]


@OPS.register(nn.PReLU)
@resized_by(_resize_prelu)
def prelu(ctx: MapContext, node: fx.Node):
    if ctx.module(node).num_parameters == 1:
        return ctx.label(node.args[0])
    out = _per_channel(ctx, node, 1, ("weight",), "PReLU")
    return out if isinstance(out, Frozen) else out[0]


# ----------------------------------------------------------------------------- elementwise

UNARY_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
)
UNARY_FUNCTIONS = (
    F.relu,
    F.relu6,
    F.leaky_relu,
    F.elu,
    F.selu,
    F.gelu,
    F.silu,
    F.mish,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.softplus,
    F.dropout,
    F.dropout2d,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
    torch.clamp,
    torch.clone,
    torch.neg,
    torch.exp,
    torch.abs,
    torch.sqrt,
    torch.square,
    operator.neg,
)
UNARY_METHODS = (
    "relu",
    "relu_",
    "sigmoid",
    "sigmoid_",
    "tanh",
    "clamp",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "to",
    "type_as",
    "neg",
    "exp",
    "abs",
    "sqrt",
    "square",
)


@OPS.register(*UNARY_MODULES, *UNARY_FUNCTIONS, *UNARY_METHODS)
def unary(ctx: MapContext, node: fx.Node):
    return ctx.label(node.args[0])


BINARY = (
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.iadd,
    operator.imul,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.maximum,
    torch.minimum,
    "add",
    "add_",
    "sub",
    "sub_",
    "mul",
    "mul_",
    "div",
    "div_",
)
COMPARISONS = tuple(  # per element, bool out: the channels pass (masks and position buckets built from them)
    f for name in ("lt", "le", "gt", "ge", "eq", "ne") for f in (getattr(operator, name), getattr(torch, name), name)
)


@OPS.register(*BINARY, *COMPARISONS)
def binary(ctx: MapContext, node: fx.Node):
    return align(ctx, node, list(node.args[:2]))


@OPS.register(torch.where)
def where(ctx: MapContext, node: fx.Node):
    """``where(condition, a, b)``: elementwise over three broadcast operands (the one-argument form is not)."""
    if len(node.args) < 3:
        return ctx.unknown(node, f"where {node.name} without values (it returns indices)")
    return align(ctx, node, list(node.args[:3]))


def align(ctx: MapContext, node: fx.Node, args: list) -> np.ndarray | Frozen:
    """Elementwise op over broadcast tensor operands (scalars skipped): see ``label_rules.align``."""
    operands = [(ctx.label(a), shape) for a in args if (shape := ctx.shape(a)) is not None]
    return rules.align(ctx.atoms, operands, ctx.shape(node), _what(ctx, node))


# ----------------------------------------------------------------------------- structure


@OPS.register(torch.cat, torch.concat, torch.concatenate)
def cat(ctx: MapContext, node: fx.Node):
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    labels, shapes = [ctx.label(t) for t in tensors], [ctx.shape(t) for t in tensors]
    return rules.concat(ctx.atoms, labels, shapes, dim, ctx.shape(node), f"concat {node.name}")


RESHAPES = (
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    nn.Flatten,
    "view",
    "reshape",
    "flatten",
    "squeeze",
    "unsqueeze",
)


SIZED_RESHAPES = (torch.reshape, "view", "reshape")  # whose arguments are sizes, rewritten on compaction


@OPS.register(*RESHAPES)
def reshape(ctx: MapContext, node: fx.Node):
    """Reshape the label with the tensor; a split channel axis keeps a product structure.

    When the channels end up varying along several axes (a channel shuffle's [g, C/g] view, heads
    x head-dim), only the innermost axis may shrink (see ``label_rules.tie_outer_axes``).
    """
    src = node.args[0]
    label = ctx.label(src)
    if isinstance(label, Frozen):
        return label
    out = rules.reshape(ctx.atoms, label, ctx.shape(src), ctx.shape(node), f"view {node.name}")
    if node.target in SIZED_RESHAPES and labelled(out):
        ctx.record_shape_rewrite(node, out)
    return out


@OPS.register("reshape_as", "view_as")
def reshape_as(ctx: MapContext, node: fx.Node):
    """Reshape to another tensor's shape: no size literal, so that tensor's channels are tied to the result's."""
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen):
        return label
    out_shape = ctx.shape(node)
    out = rules.reshape(ctx.atoms, label, ctx.shape(node.args[0]), out_shape, f"view {node.name}")
    if isinstance(out, Frozen):
        return out
    return rules.align(ctx.atoms, [(out, out_shape), (ctx.label(node.args[1]), out_shape)], out_shape, _what(ctx, node))


@OPS.register(torch.stack)
def stack(ctx: MapContext, node: fx.Node):
    """Stack = concatenate along a new axis: the operands' channels (on other axes) are tied position by position."""
    tensors = node.args[0]
    dim = _arg(node, 1, "dim") or 0
    out_shape = ctx.shape(node)
    dim %= len(out_shape)
    labels = [ctx.label(t) for t in tensors]
    if not all(isinstance(lab, np.ndarray) for lab in labels):
        return rules.concat(ctx.atoms, labels, [None] * len(labels), dim, out_shape, f"stack {node.name}")
    labels = [np.expand_dims(right_align(lab, len(out_shape) - 1), dim) for lab in labels]
    shapes = [out_shape[:dim] + (1,) + out_shape[dim + 1 :] for _ in labels]
    return rules.concat(ctx.atoms, labels, shapes, dim, out_shape, f"stack {node.name}")


@OPS.register("repeat")
def repeat(ctx: MapContext, node: fx.Node):
    """Tile: a channel axis repeated r times carries its channels r times (factors need no rewrite)."""
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen):
        return label
    reps = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
    if not all(isinstance(r, int) for r in reps):
        return ctx.unknown(node, f"repeat {node.name} with computed factors")
    return rules.tile(label, reps)


def _pixel_channels(ctx: MapContext, node: fx.Node, factor: str, what: str) -> tuple[int, np.ndarray | None]:
    """The block factor of a pixel (un)shuffle (module attribute or argument) and its input's channel atoms."""
    m = ctx.module_or_none(node)
    r = getattr(m, factor) if m is not None else _arg(node, 1, factor)
    size = ctx.shape(node.args[0])[-3]
    return r, ctx.channel_labels(node, node.args[0], dim=-3, size=size, what=what)


@OPS.register(nn.PixelShuffle, F.pixel_shuffle)
def pixel_shuffle(ctx: MapContext, node: fx.Node):
    """[N, C*r*r, H, W] -> [N, C, H*r, W*r]: the r*r input channels of output channel c are one channel."""
    r, vec = _pixel_channels(ctx, node, "upscale_factor", "pixel shuffle")
    if vec is None:
        return Frozen(f"pixel shuffle {node.name} sees frozen channels")
    out = rules.merge_blocks(ctx.atoms, vec.reshape(-1, r * r), f"pixel shuffle {node.name}")
    return out if isinstance(out, Frozen) else rules.channel_shaped(out, len(ctx.shape(node)), -3)


@OPS.register(nn.PixelUnshuffle, F.pixel_unshuffle)
def pixel_unshuffle(ctx: MapContext, node: fx.Node):
    """[N, C, H*r, W*r] -> [N, C*r*r, H, W]: input channel c becomes r*r consecutive output channels."""
    r, vec = _pixel_channels(ctx, node, "downscale_factor", "pixel unshuffle")
    if vec is None:
        return Frozen(f"pixel unshuffle {node.name} sees frozen channels")
    return rules.channel_shaped(np.repeat(vec, r * r), len(ctx.shape(node)), -3)


@OPS.register("expand", "expand_as")
def expand(ctx: MapContext, node: fx.Node):
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen):
        return label
    out = right_align(label, len(ctx.shape(node)))
    ctx.record_shape_rewrite(node, out)
    return out


@OPS.register("permute", torch.permute)
def permute(ctx: MapContext, node: fx.Node):
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen):
        return label
    dims = node.args[1:] if not isinstance(node.args[1], (list, tuple)) else node.args[1]
    dims = node.kwargs.get("dims", dims)
    return np.transpose(label, [d % label.ndim for d in dims])


@OPS.register("transpose", torch.transpose, "swapaxes", torch.swapaxes, "swapdims", torch.swapdims)
def transpose(ctx: MapContext, node: fx.Node):
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen):
        return label
    return np.swapaxes(label, node.args[1], node.args[2])


@OPS.register("chunk", torch.chunk, "split", torch.split)
def split(ctx: MapContext, node: fx.Node):
    """Split along an axis; along a channel axis the piece sizes are rewritten on compaction."""
    label = ctx.label(node.args[0])
    out_meta = ctx.shapes(node)
    if isinstance(label, Frozen):
        return tuple(label for _ in out_meta)
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    in_shape = ctx.shape(node.args[0])
    dim %= len(in_shape)
    sizes = [s[dim] for s in out_meta]
    result = rules.split(label, in_shape, dim, sizes)
    if result is None:
        return ctx.unknown(node, f"split {node.name} of channels that vary along several axes")
    pieces, vec = result
    if vec is not None:
        ctx.record_split_rewrite(node, vec, dim, sizes)
    return tuple(pieces)


@OPS.register("unbind", torch.unbind)
def unbind(ctx: MapContext, node: fx.Node):
    """Unbind along an axis whose positions never shrink (e.g. the q/k/v axis tied by a reshape)."""
    label = ctx.label(node.args[0])
    n_out = len(ctx.shapes(node))
    if isinstance(label, Frozen):
        return tuple(label for _ in range(n_out))
    in_shape = ctx.shape(node.args[0])
    dim = _arg(node, 1, "dim") or 0
    dim %= len(in_shape)
    label = right_align(label, len(in_shape))
    vary = varying_dims(label)
    if dim in vary and dim == vary[-1]:  # the innermost varying axis is the one that shrinks
        return ctx.unknown(node, f"unbind {node.name} along a channel axis")
    full = np.broadcast_to(label, label.shape[:dim] + (n_out,) + label.shape[dim + 1 :])
    return tuple(compact(np.take(full, i, axis=dim)) for i in range(n_out))


@OPS.register(operator.getitem)
def getitem(ctx: MapContext, node: fx.Node):
    src, idx = node.args
    label = ctx.label(src)
    if isinstance(label, (tuple, list)):
        return label[idx]
    if label is None:
        return None
    if isinstance(label, Frozen):
        return label
    return _index_tensor(ctx, node, label, idx)


def _index_tensor(ctx: MapContext, node: fx.Node, label: np.ndarray, idx):
    in_shape = ctx.shape(node.args[0])
    if isinstance(idx, fx.Node) and right_align(label, len(in_shape)).shape[0] == 1:
        # rows picked by a tensor (a relative-position bias table): the other axes' channels pass
        return right_align(label, len(in_shape))[0]
    idx = idx if isinstance(idx, tuple) else (idx,)
    if not all(i is None or i is Ellipsis or isinstance(i, (int, slice)) for i in idx):
        return ctx.unknown(node, f"advanced indexing {node.name}")
    label = right_align(label, len(in_shape))
    full = np.broadcast_to(label, in_shape)
    # which input dim each index entry addresses (None adds an axis, Ellipsis fills the rest)
    n_addr = sum(1 for i in idx if i is not None and i is not Ellipsis)
    dim, slices = 0, []
    vary = varying_dims(label)
    for pos, i in enumerate(idx):
        if i is Ellipsis:
            dim += len(in_shape) - n_addr
            continue
        if i is None:
            continue
        if label.shape[dim] > 1 and len(vary) > 1 and dim != vary[-1]:
            # an outer axis of a split channel axis (q/k/v of a fused projection) never shrinks
            rules.tie_outer_axes(ctx.atoms, label, f"indexing {node.name}")
        elif label.shape[dim] > 1:
            if isinstance(i, int) or (isinstance(i, slice) and i.step not in (None, 1)):
                return ctx.unknown(node, f"indexing {node.name} picks single channels")
            if any(isinstance(v, fx.Node) for v in (i.start, i.stop)):
                return ctx.unknown(node, f"slicing {node.name} with computed bounds")
            slices.append((pos, _vector_along(label, dim, in_shape[dim])))
        dim += 1
    if slices:
        ctx.record_slice_rewrite(node, slices)
    return compact(np.ascontiguousarray(full[idx]))


def _vector_along(label: np.ndarray, dim: int, size: int) -> np.ndarray:
    return np.broadcast_to(np.moveaxis(label, dim, -1).reshape(-1, label.shape[dim])[0], (size,))


# ----------------------------------------------------------------------------- spatial, reductions

SPATIAL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
    nn.ReflectionPad2d,
    nn.ReplicationPad2d,
)
SPATIAL_FUNCTIONS = (
    F.max_pool1d,
    F.max_pool2d,
    F.max_pool3d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.avg_pool3d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d,
    F.adaptive_max_pool2d,
    F.interpolate,
    torch.max_pool2d,
)


@OPS.register(*SPATIAL_MODULES, *SPATIAL_FUNCTIONS)
def spatial(ctx: MapContext, node: fx.Node):
    """Pooling, resizing and spatial padding act per channel (axis 1)."""
    size = ctx.shape(node.args[0])[1]
    vec = ctx.channel_labels(node, node.args[0], dim=1, size=size, what="pooling input")
    if vec is None:
        return Frozen(f"spatial op {node.name} sees channels varying along space")
    return compact(rules.channel_shaped(vec, len(ctx.shape(node))))


@OPS.register(F.pad)
def pad(ctx: MapContext, node: fx.Node):
    padding = node.args[1] if len(node.args) > 1 else node.kwargs["pad"]
    if len(padding) > 2 * (len(ctx.shape(node)) - 2):
        return ctx.unknown(node, f"padding {node.name} reaches the channel axis")
    return spatial(ctx, node)


REDUCTIONS = (torch.mean, torch.sum, torch.amax, "mean", "sum", "amax", "std", "var")


@OPS.register(*REDUCTIONS)
def reduction(ctx: MapContext, node: fx.Node):
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen):
        return label
    nd = len(ctx.shape(node.args[0]))
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    if dims is None:
        dims = list(range(nd))
    dims = dims if isinstance(dims, (list, tuple)) else [dims]
    return rules.reduce(ctx.atoms, label, nd, dims, keep, len(ctx.shape(node)), _what(ctx, node))


@OPS.register(F.softmax, F.log_softmax, torch.softmax, "softmax", "log_softmax", nn.Softmax, nn.LogSoftmax)
def softmax(ctx: MapContext, node: fx.Node):
    label = ctx.label(node.args[0])
    if isinstance(label, Frozen):
        return label
    m = ctx.module_or_none(node)
    dim = m.dim if m is not None else node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    nd, what = len(ctx.shape(node)), f"softmax {node.name}"
    if dim is None:  # torch picks the axis itself: every channel is taken as normalised over
        label = right_align(label, nd)
        ctx.atoms.freeze(label, f"{what} normalises across channels")
        return label
    return rules.normalise_over(ctx.atoms, label, nd, [dim], what)


NON_TENSOR = ("size", "dim", "numel", getattr, torch._assert)


@OPS.register(*NON_TENSOR)
def non_tensor(ctx: MapContext, node: fx.Node):
    return None


def _arg(node: fx.Node, index: int, name: str):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _functional_norm(ctx: MapContext, node: fx.Node, dim: int, params: dict[str, int], what: str):
    """A functional norm with per-channel parameters passed as tensors: tie them to the channels."""
    size = ctx.shape(node.args[0])[dim]
    vec = ctx.channel_labels(node, node.args[0], dim=dim, size=size, what=what)
    if vec is None:  # the parameters' own channels must not stay prunable
        ctx.freeze_inputs(node, f"{what} {node.name} sees frozen channels")
        return None
    for key, i in params.items():
        param = _arg(node, i, key)
        if isinstance(param, fx.Node) and param.op == "get_attr":
            tensor = ctx.tensors.get(param.target)  # buffers (running statistics) carry no label: sited here
            if isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == (size,):
                ctx.site(param.target, 0, vec, PARAM, node)
                continue
        if isinstance(param, fx.Node):
            label = ctx.label(param)
            if not isinstance(label, np.ndarray) or label.size != size:
                ctx.unknown(node, f"{what} {node.name}: {key} is not a per-channel parameter")
                return None
            ctx.atoms.union(vec, label.reshape(-1))
    return vec


@OPS.register(F.layer_norm, zero_padded_layer_norm)
def functional_layer_norm(ctx: MapContext, node: fx.Node):
    """F.layer_norm(x, shape, weight, bias) as torchvision's LayerNorm2d calls it: exact.

    Compaction calls :func:`hwprune.layers.zero_padded_layer_norm` with the original width instead.
    """
    shape = _arg(node, 1, "normalized_shape")
    if len(shape) != 1:
        return ctx.unknown(node, f"layer_norm {node.name} over several axes")
    vec = _functional_norm(ctx, node, -1, {"weight": 2, "bias": 3}, "layer norm")
    if vec is None:
        return Frozen(f"layer norm {node.name} sees frozen channels")
    ctx.record_rewrite(node, LayerNormRewrite(vec, len(ctx.shape(node.args[0]))))  # exact: zero-padded
    return ctx.label(node.args[0])


@OPS.register(F.batch_norm)
def functional_batch_norm(ctx: MapContext, node: fx.Node):
    """F.batch_norm(x, running_mean, running_var, weight, bias, ...), as timm's BatchNormAct2d calls it."""
    params = {"running_mean": 1, "running_var": 2, "weight": 3, "bias": 4}
    if _functional_norm(ctx, node, 1, params, "batch norm") is None:
        return Frozen(f"batch norm {node.name} sees frozen channels")
    return ctx.label(node.args[0])


@OPS.register(F.linear)
def functional_linear(ctx: MapContext, node: fx.Node):
    """F.linear(x, weight, bias) with parameters read by get_attr (timm, fx-wrapped modules)."""
    weight, bias = node.args[1] if len(node.args) > 1 else node.kwargs["weight"], _arg(node, 2, "bias")
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr") or (
        isinstance(bias, fx.Node) and bias.op != "get_attr"
    ):
        return ctx.unknown(node, f"linear {node.name} with a computed weight")
    out_shape = ctx.shape(node)
    c_out, c_in = ctx.shape(weight)
    macs = c_out * c_in * math.prod(out_shape[1:-1])
    vec = ctx.channel_labels(node, node.args[0], dim=-1, size=c_in, what="linear input")
    if vec is None and isinstance(ctx.label(weight), np.ndarray):  # its get_attr label must not stay prunable
        ctx.atoms.freeze(ctx.label(weight), f"input of linear {node.name} is frozen")
    bias = (bias.target, 0) if isinstance(bias, fx.Node) else None
    out = rules.linear_sites(ctx, node, vec, weight.target, 0, c_out, macs, bias)
    return rules.channel_shaped(out, len(out_shape), -1)


def _register_torchvision_ops() -> None:
    """Torchvision wraps stochastic depth for fx; in eval it is the identity, in training a per-sample scale."""
    try:
        from torchvision.ops.stochastic_depth import stochastic_depth
    except ImportError:  # torchvision is optional for the mapper
        return
    OPS.register(stochastic_depth)(unary)


_register_torchvision_ops()
