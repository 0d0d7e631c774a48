"""ONNX front-end: the channel groups of a model that exists only as an ONNX file.

The model is normalised first (Constant nodes become initializers, node names are made unique,
shape arithmetic is folded to constants when every shape is static), then run once in
onnxruntime with every value exposed, so that each handler sees concrete shapes, as the fx
front-end does. Handlers (:mod:`hwprune.graph_mapper.onnx_ops`) propagate channel atoms from node
to node and record sites on initializers; :func:`~hwprune.graph_mapper.assemble.assemble` turns
them into the same :class:`ChannelGraph` the fx front-end builds, with ``gm`` holding the
normalised ``onnx.ModelProto`` that compaction rewrites.

Anything the mapper cannot see through fails closed: an op without a handler, an op of another
domain (custom ops), a value whose shape could not be determined, freeze every channel reaching
them, with a reason naming the op and the node.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from hwprune.errors import HwpruneError, first_line
from hwprune.export.large_onnx import infer_shapes, save_onnx
from hwprune.graph_mapper.assemble import assemble
from hwprune.graph_mapper.atoms import Frozen, fixed_label, labelled
from hwprune.graph_mapper.label_rules import LabelRecorder
from hwprune.graph_mapper.onnx_ops import DEFAULT_DOMAINS, ONNX_OPS, op_label
from hwprune.graph_mapper.types import PARAM, ChannelGraph

MAX_FOLDED = 4096  # elements: shape arithmetic, never activations or weights
# ops whose output shape depends on data values: with one of them, no shape is provably constant
DATA_DEPENDENT_SHAPES = {"NonZero", "Unique", "Compress", "NonMaxSuppression", "TopK", "Loop", "If", "Scan"}
NONDETERMINISTIC = {
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
}
FLOAT_TYPES = (np.float16, np.float32, np.float64)


# ----------------------------------------------------------------------------- loading, normalising


def load_onnx(source) -> onnx.ModelProto:
    """A copy of ``source`` (a path or a ModelProto); one-line errors for missing or foreign files."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model
    path = Path(source)
    if not path.is_file():
        raise HwpruneError(f"ONNX file {path} does not exist" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf and external-data errors come in many types
        raise HwpruneError(f"{path} is not an ONNX model ({first_line(exc)})") from None
    if not model.graph.node or not model.opset_import:
        raise HwpruneError(f"{path} is not an ONNX model (no graph nodes or opset)")
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 1)


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    """The tensor of a Constant node (None for sparse or string constants)."""
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_floats"):
            return np.asarray(helper.get_attribute_value(a), dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.asarray(helper.get_attribute_value(a), dtype=np.int64)
    return None


def _normalise(model: onnx.ModelProto) -> None:
    """In place: Constant nodes become initializers, initializers leave the input list, names are unique.

    Compaction slices initializers and identifies nodes by name, so both must be unambiguous.
    """
    graph = model.graph
    kept = []
    for node in graph.node:
        value = _constant_value(node) if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS else None
        if value is None:
            kept.append(node)
        else:
            graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    inits = {t.name for t in graph.initializer}
    real_inputs = [i for i in graph.input if i.name not in inits]
    del graph.input[:]
    graph.input.extend(real_inputs)
    seen: set[str] = set()
    for i, node in enumerate(graph.node):
        name = node.name or f"{node.op_type}_{i}"
        while name in seen:
            name = f"{name}_{i}"
        node.name = name
        seen.add(name)


def implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope values a node's subgraphs read (If/Loop/Scan bodies)."""
    out: set[str] = set()
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                out |= {i for i in n.input if i and i not in defined} | (implicit_inputs(n) - defined)
                defined |= set(n.output)
    return out


def remove_dead_code(model: onnx.ModelProto) -> None:
    """Drop nodes whose outputs nothing reads, then initializers nothing reads (in place)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed |= set(node.input) | implicit_inputs(node)
    del graph.node[:]
    graph.node.extend(reversed(live))
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


# ----------------------------------------------------------------------------- shapes


@dataclass
class Propagation:
    """Concrete shapes of every value, the small values themselves, and how they were found."""

    shapes: dict[str, tuple[int, ...]]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    static: bool = True  # every graph input had static dims
    note: str = ""  # why shapes may be missing (onnxruntime could not run the model)


def fix_input_shape(model: onnx.ModelProto, input_shape) -> None:
    """Give the (single) graph input the concrete ``input_shape`` (in place); static dims must agree."""
    inputs = list(model.graph.input)
    if len(inputs) != 1:
        raise HwpruneError(
            f"input_shape applies to a model with one input; this one has {len(inputs)} "
            f"({', '.join(i.name for i in inputs)}): give them static shapes in the file"
        )
    shape = tuple(int(s) for s in input_shape)
    dims = inputs[0].type.tensor_type.shape.dim
    declared = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != len(declared) or any(d is not None and d != s for d, s in zip(declared, shape, strict=True)):
        raise HwpruneError(
            f"ONNX input {inputs[0].name} has shape {_dims_text(declared)}, which input_shape {shape} does not fit"
        )
    for d, size in zip(dims, shape, strict=True):
        d.Clear()
        d.dim_value = size


def _input_specs(model: onnx.ModelProto) -> tuple[dict[str, tuple], bool]:
    """Concrete shape and dtype of every graph input (a dynamic batch: one sample); all static?"""
    inputs = list(model.graph.input)
    if not inputs:
        raise HwpruneError(f"ONNX model {model.graph.name!r} has no inputs")
    specs, static = {}, True
    for inp in inputs:
        t = inp.type.tensor_type
        if not t.HasField("shape"):
            raise HwpruneError(f"ONNX input {inp.name} has no declared shape: the input shape cannot be determined")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        static &= None not in dims
        if None in dims[1:] or (len(inputs) > 1 and None in dims):
            raise HwpruneError(
                f"ONNX input {inp.name} has dynamic dimensions {_dims_text(dims)}: "
                + ("pass input_shape" if len(inputs) == 1 else "the input shape cannot be determined")
            )
        specs[inp.name] = (tuple(1 if d is None else d for d in dims), helper.tensor_dtype_to_np_dtype(t.elem_type))
    return specs, static


def _dims_text(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _feeds(specs: dict, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, (shape, dtype) in specs.items():
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[name] = np.zeros(shape, dtype=dtype)
    return feeds


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """A random input for every graph input, at the shapes the mapper uses."""
    return _feeds(_input_specs(model)[0], seed)


def _run_everything(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """Run once in onnxruntime with every node output exposed as a graph output."""
    from hwprune.export.onnx_export import ort_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for node in probe.graph.node:
        probe.graph.output.extend(onnx.ValueInfoProto(name=o) for o in node.output if o and o not in have)
    with tempfile.TemporaryDirectory(prefix="hwprune-onnx-") as tmp:
        path = Path(tmp) / "probe.onnx"
        save_onnx(probe, path)
        session = ort_session(path)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))


def _inferred_shapes(model: onnx.ModelProto, specs: dict) -> dict[str, tuple[int, ...]]:
    """Shapes from onnx shape inference at the concrete input shapes: the fallback when onnxruntime cannot run."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for inp in probe.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for d, size in zip(dims, specs[inp.name][0], strict=True):
            d.Clear()
            d.dim_value = size
    try:
        probe = infer_shapes(probe, strict_mode=False, data_prop=True)
    except Exception:  # inference gives up on some graphs: every shape is then unknown
        return {}
    shapes = {}
    for vi in list(probe.graph.value_info) + list(probe.graph.output) + list(probe.graph.input):
        t = vi.type.tensor_type
        if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
            shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    return shapes


def propagate(model: onnx.ModelProto, seed: int = 0) -> Propagation:
    """Shapes of every value from one onnxruntime run on a random input (shape inference if it cannot run)."""
    specs, static = _input_specs(model)
    shapes = {name: shape for name, (shape, _) in specs.items()}
    shapes |= {t.name: tuple(t.dims) for t in model.graph.initializer}
    try:
        values = _run_everything(model, _feeds(specs, seed))
    except Exception as exc:  # custom ops, invalid graphs: fall back to shape inference
        shapes |= _inferred_shapes(model, specs)
        return Propagation(shapes, static=static, note=f"onnxruntime cannot run the model: {first_line(exc)[:200]}")
    shapes |= {name: tuple(v.shape) for name, v in values.items()}
    small = {name: v for name, v in values.items() if v.size <= MAX_FOLDED}
    return Propagation(shapes, small, static)


def fold_constants(model: onnx.ModelProto, prop: Propagation) -> None:
    """Replace values computed only from constants (and, when provably static, from shapes) by initializers.

    With static input shapes and no op whose output shape depends on data, every Shape output is
    a constant, so shape arithmetic (Shape -> Gather -> Div -> Slice bounds) can be written as the
    values onnxruntime computed; handlers then read sizes they can rewrite on compaction.
    """
    graph = model.graph
    shapes_fixed = prop.static and all(
        n.domain in DEFAULT_DOMAINS and n.op_type not in DATA_DEPENDENT_SHAPES for n in graph.node
    )
    known = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    folded, kept = [], []
    for node in graph.node:
        outs = [o for o in node.output if o]
        from_shapes = node.op_type in ("Shape", "Size") and shapes_fixed
        from_consts = bool(node.input) and all(not i or i in known for i in node.input)
        foldable = (
            (from_shapes or from_consts)
            and node.domain in DEFAULT_DOMAINS
            and node.op_type not in NONDETERMINISTIC
            and not implicit_inputs(node)
            and all(o in prop.values and o not in outputs for o in outs)
        )
        if foldable:
            known.update(outs)
            folded += [numpy_helper.from_array(prop.values[o], o) for o in outs]
        else:
            kept.append(node)
    if folded:
        del graph.node[:]
        graph.node.extend(kept)
        graph.initializer.extend(folded)
        remove_dead_code(model)


# ----------------------------------------------------------------------------- mapping


class OnnxContext(LabelRecorder):
    """What ONNX handlers see: labels and shapes of values by name, initializers, the node being mapped."""

    def __init__(self, model: onnx.ModelProto, prop: Propagation) -> None:
        super().__init__()
        self.model = model
        self.opset = opset_of(model)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.prop = prop
        self.node: onnx.NodeProto | None = None
        self.pinned: dict[str, str] = {}  # initializer -> why its shape must not change
        self._arrays: dict[str, np.ndarray] = {}

    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.prop.shapes.get(name)

    def const(self, name: str) -> np.ndarray | None:
        """The value of an initializer (None for computed values and absent optional inputs)."""
        if name not in self.initializers:
            return None
        if name not in self._arrays:
            self._arrays[name] = numpy_helper.to_array(self.initializers[name])
        return self._arrays[name]

    def label(self, name: str):
        if not name:
            return None
        if name not in self.labels and name in self.initializers:
            self.labels[name] = self._initializer_label(name)
        return self.labels.get(name)

    def _initializer_label(self, name: str) -> np.ndarray:
        """An initializer used as an operand: channels along its last non-trivial axis (a PARAM site).

        Like a parameter the fx front-end meets through get_attr (a layer scale, a PReLU slope, a
        bias added after MatMul): it is tied to whatever channels it meets.
        """
        value = self.const(name)
        axes = [d for d, s in enumerate(value.shape) if s > 1]
        if not axes or value.dtype.type not in FLOAT_TYPES:
            return fixed_label(value.ndim)
        axis = axes[-1]
        atoms = self.atoms.new(value.shape[axis])
        self.site(name, axis, atoms, PARAM, self.node)
        return atoms.reshape(tuple(-1 if d == axis else 1 for d in range(value.ndim)))

    def inputs(self, node: onnx.NodeProto) -> list[str]:
        return [i for i in node.input if i] + sorted(implicit_inputs(node))

    def freeze_inputs(self, node: onnx.NodeProto, reason: str) -> None:
        """Freeze every channel reaching ``node``; its initializers must keep their shapes."""
        for name in self.inputs(node):
            if name in self.initializers:
                self.pinned.setdefault(name, reason)
            label = self.labels.get(name)
            if isinstance(label, np.ndarray):
                self.atoms.freeze(label, reason)

    def unknown(self, node: onnx.NodeProto, reason: str | None = None):
        """Fail closed: freeze every channel reaching the node; its outputs carry nothing prunable."""
        reason = reason or f"no handler for ONNX op {op_label(node)} (node {node.name})"
        self.freeze_inputs(node, reason)
        weights = [self.initializers[i].dims for i in node.input if i in self.initializers]
        weights = [dims for dims in weights if len(dims) >= 2]
        if weights and node.output:
            self.record_unmapped(node, max(math.prod(d) for d in weights), self.shape(node.output[0]))
        return tuple(Frozen(reason) for _ in node.output)

    def finish(self) -> None:
        """Freeze what reaches a graph output, and every site on an initializer an unknown op reads."""
        for out in self.model.graph.output:
            label = self.labels.get(out.name)
            if isinstance(label, np.ndarray):
                self.atoms.freeze(label, "reaches the model output")
        for site in self.sites:
            if site.tensor in self.pinned:
                self.atoms.freeze(site.atoms, f"{site.tensor} is also read where {self.pinned[site.tensor]}")


def _visit(ctx: OnnxContext, node: onnx.NodeProto) -> tuple:
    names = [i for i in node.input if i] + [o for o in node.output if o]
    missing = [n for n in names if ctx.shape(n) is None]
    if missing:
        note = f" ({ctx.prop.note})" if ctx.prop.note else ""
        return ctx.unknown(node, f"shape of {missing[0]} unknown at {op_label(node)} {node.name}{note}")
    handler = ONNX_OPS.get(node.op_type) if node.domain in DEFAULT_DOMAINS and node.op_type in ONNX_OPS else None
    if handler is None:
        return _no_handler(ctx, node)
    try:
        out = handler(ctx, node)
    except HwpruneError:
        raise
    except Exception as exc:  # a handler that cannot cope with an unusual node fails closed
        return ctx.unknown(node, f"{op_label(node)} {node.name}: handler failed ({exc})")
    return _per_output(out, node)


def _no_handler(ctx: OnnxContext, node: onnx.NodeProto) -> tuple:
    """An op without a handler: fail closed, unless no channel reaches it (its output is then fixed)."""
    carried = [ctx.labels.get(i) for i in ctx.inputs(node) if i not in ctx.initializers]
    if any(isinstance(lab, Frozen) or lab is None or labelled(lab) for lab in carried):
        return ctx.unknown(node)
    ctx.freeze_inputs(node, f"no handler for ONNX op {op_label(node)} (node {node.name})")  # pins initializers
    return tuple(fixed_label(len(ctx.shape(o))) for o in node.output)


def _per_output(out, node: onnx.NodeProto) -> tuple:
    """One label per output: extra outputs a handler does not describe are untracked (Frozen)."""
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    untracked = Frozen(f"output of {op_label(node)} {node.name} not tracked")
    return tuple(outs[i] if i < len(outs) else untracked for i in range(len(node.output)))


def _node_labels(ctx: OnnxContext) -> dict[str, np.ndarray]:
    """Each node's output atoms, to list the nodes a group flows through."""
    out = {}
    for node in ctx.model.graph.node:
        arrays = [ctx.labels.get(o) for o in node.output]
        arrays = [a.reshape(-1) for a in arrays if isinstance(a, np.ndarray)]
        if arrays:
            out[node.name] = np.concatenate(arrays)
    return out


def build_onnx_channel_graph(source, name: str | None = None, input_shape=None, seed: int = 0) -> ChannelGraph:
    """Map an ONNX model (a path or a ModelProto) to its channel groups.

    ``input_shape`` makes the input of a one-input model static at that shape: the graph (and the
    compacted model), like the fx graph, then holds for that shape only, and shape arithmetic
    can be folded. Without it a dynamic batch is mapped at one sample and stays dynamic, and a
    computed shape that touches channels freezes them. ``graph.gm`` is the normalised ModelProto.
    """
    start = time.perf_counter()
    model = load_onnx(source)
    if name is None:
        name = Path(source).stem if not isinstance(source, onnx.ModelProto) else (model.graph.name or "onnx")
    _normalise(model)
    if input_shape is not None:
        fix_input_shape(model, input_shape)
    prop = propagate(model, seed)
    fold_constants(model, prop)
    ctx = OnnxContext(model, prop)
    for inp in model.graph.input:
        ctx.labels[inp.name] = fixed_label(len(prop.shapes[inp.name]))
    for node in model.graph.node:
        ctx.node = node
        for out, label in zip(node.output, _visit(ctx, node), strict=True):
            if out:
                ctx.labels[out] = label
    ctx.finish()
    numel = {t.name: math.prod(t.dims) for t in model.graph.initializer}
    first = model.graph.input[0].name
    graph = assemble(ctx.atoms, ctx.sites, numel, _node_labels(ctx), ctx.rewrites, name, prop.shapes[first], model)
    graph.unmapped_macs = sum(ctx.unmapped_macs.values())
    graph.build_s = time.perf_counter() - start
    return graph


# ----------------------------------------------------------------------------- scores for masks

ONNX_IMPORTANCES = ("l1", "l2", "mag_based", "random")


class InitializerParameters:
    """An ONNX graph's initializers, listed the way a module lists parameters and buffers.

    Weight-based importances (l1, l2, random) only read named tensors, so they run unchanged on
    an ONNX graph through this view; BatchNormalization running statistics are buffers, as in
    PyTorch, and are not scored.
    """

    def __init__(self, model: onnx.ModelProto) -> None:
        import torch

        stats = running_statistics(model)
        arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self._params = {n: torch.from_numpy(a.copy()) for n, a in arrays.items() if n not in stats}
        self._buffers = {n: torch.from_numpy(a.copy()) for n, a in arrays.items() if n in stats}

    def named_parameters(self, remove_duplicate: bool = True):
        return iter(self._params.items())

    def named_buffers(self):
        return iter(self._buffers.items())


def running_statistics(model: onnx.ModelProto) -> set[str]:
    """Initializers holding BatchNormalization running mean and variance (buffers, not weights)."""
    return {i for n in model.graph.node if n.op_type == "BatchNormalization" for i in n.input[3:5]}


def check_onnx_importance(method: str) -> None:
    """Refuse importances that need a PyTorch model (gradients, module types) for an ONNX file."""
    if method not in ONNX_IMPORTANCES:
        raise HwpruneError(
            f"importance {method!r} needs a PyTorch model (gradients or module types); "
            f"for an ONNX file use one of {', '.join(ONNX_IMPORTANCES)}"
        )
