"""torch.fx front-end: trace a model, propagate channel labels, assemble the ChannelGraph."""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import fx, nn

from hwprune.errors import HwpruneError, first_line
from hwprune.graph_mapper import attention_ops, hf_modules  # noqa: F401  (register their handlers)
from hwprune.graph_mapper.assemble import assemble
from hwprune.graph_mapper.atoms import Frozen, fixed_label
from hwprune.graph_mapper.label_rules import LabelRecorder, channel_shaped
from hwprune.graph_mapper.ops import find_handler, op_name, type_handler
from hwprune.graph_mapper.types import PARAM, ChannelGraph


class MapContext(LabelRecorder):
    """What handlers see: labels and shapes of nodes, modules and tensors, and the site recorder."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__()
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.use_tensors(gm)

    def use_tensors(self, module: nn.Module) -> None:
        """Every name of ``module``'s parameters and buffers; a tied tensor's names all record on its first."""
        self.tensors = dict(module.named_parameters(remove_duplicate=False))
        self.tensors |= dict(module.named_buffers(remove_duplicate=False))
        first: dict[int, str] = {}
        self.aliases = {name: first.setdefault(id(t), name) for name, t in self.tensors.items()}

    # -- lookups
    def module(self, node: fx.Node) -> nn.Module:
        return self.modules[node.target]

    def module_or_none(self, node: fx.Node) -> nn.Module | None:
        return self.modules.get(node.target) if node.op == "call_module" else None

    def label(self, arg):
        if isinstance(arg, fx.Node):
            return self.labels.get(arg.name)
        if isinstance(arg, (list, tuple)):
            return tuple(self.label(a) for a in arg)
        if isinstance(arg, dict):  # a dict output (segmentation heads): every value is an output
            return tuple(self.label(a) for a in arg.values())
        return None

    def shapes(self, node: fx.Node):
        """Output shape (a tuple), a list of shapes for multi-output nodes, or None for non-tensors."""
        return node.meta.get("hw_shape")

    def shape(self, arg) -> tuple[int, ...] | None:
        if not isinstance(arg, fx.Node):
            return None
        shape = self.shapes(arg)
        return shape if isinstance(shape, tuple) else None

    def graph(self, name: str, input_shape: tuple[int, ...], gm, rewrites) -> ChannelGraph:
        """The ChannelGraph of what the handlers recorded (``gm``: what compaction copies and slices)."""
        numel = {tensor: t.numel() for tensor, t in self.tensors.items()}
        graph = assemble(
            self.atoms, self.sites, numel, self.labels, rewrites, name, input_shape, gm, self.block_constraints
        )
        graph.unmapped_macs = sum(self.unmapped_macs.values())
        return graph

    # -- failing closed
    def freeze_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            for label in _flat(self.labels.get(arg.name)):
                if isinstance(label, np.ndarray):
                    self.atoms.freeze(label, reason)

    def op_text(self, node: fx.Node) -> str:
        """How messages name the node's op (``Conv2d``, ``add``)."""
        return op_name(node, self.module_or_none(node))

    def weight_of(self, node: fx.Node) -> torch.Tensor | None:
        """The weight of the node's op, if it has one (a module's ``weight``)."""
        return getattr(self.module_or_none(node), "weight", None)

    def freeze_output(self, node: fx.Node) -> None:
        """The output node: every channel reaching the model's outputs stays."""
        for label in _flat(self.label(node.args[0])):
            if isinstance(label, np.ndarray):
                self.atoms.freeze(label, "reaches the model output")

    def apply(self, node: fx.Node, handler):
        """The node's label from its op's handler; without one, fixed if no channels reach it, else unknown."""
        if handler is None:
            if not any(isinstance(x, (np.ndarray, Frozen)) for a in node.all_input_nodes for x in _flat(self.label(a))):
                shapes = self.shapes(node)
                return fixed_label(len(shapes)) if isinstance(shapes, tuple) else None
            return self.unknown(node)
        try:
            return handler(self, node)
        except HwpruneError:
            raise
        except Exception as exc:  # a handler that cannot cope with an unusual call fails closed
            return self.unknown(node, f"{self.op_text(node)} {node.name}: handler failed ({exc})")

    def unknown(self, node: fx.Node, reason: str | None = None):
        """Fail closed: freeze every channel reaching the node; its output carries nothing prunable."""
        reason = reason or f"no handler for op {self.op_text(node)} (node {node.name})"
        self.freeze_inputs(node, reason)
        shapes = self.shapes(node)
        weight = self.weight_of(node)
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            self.record_unmapped(node, weight.numel(), shapes if isinstance(shapes, tuple) else None)
        if shapes is None:
            return None
        if isinstance(shapes, tuple):
            return Frozen(reason)
        return tuple(None if s is None else Frozen(reason) for s in shapes)


def _flat(label):
    if isinstance(label, (tuple, list)):
        for x in label:
            yield from _flat(x)
    elif label is not None:
        yield label


class _Tracer(fx.Tracer):
    """torch.fx's tracer, except that a module type with a registered op handler is a leaf.

    A custom layer (even one fx cannot trace, e.g. a Python loop over channels) is then mapped by the
    handler registered for it instead of traced through: docs/extending.md has the worked example.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type_handler(type(m)) is not None or super().is_leaf_module(m, module_qualified_name)


class TraceError(HwpruneError):
    """Symbolic tracing cannot capture the model's code (the export front-end may)."""


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        tracer = _Tracer()
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises many types for untraceable code
        first = first_line(exc)
        raise TraceError(f"torch.fx cannot trace {type(model).__name__}: {first}") from exc


def build_channel_graph_fx(model: nn.Module, example_input: torch.Tensor, name: str | None = None) -> ChannelGraph:
    """Map ``model`` (traced symbolically, shapes from one forward pass on ``example_input``) to its channel groups."""
    start = time.perf_counter()
    modes = {m: m.training for m in model.modules()}  # restored per module: a user's eval-mode BN stays so
    model.eval()
    try:
        gm = trace(model)
        _propagate_shapes(gm, example_input, name or type(model).__name__)
        ctx = MapContext(gm)
        for node in gm.graph.nodes:
            ctx.labels[node.name] = _visit(ctx, node)
        graph = ctx.graph(name or type(model).__name__, tuple(example_input.shape), gm, ctx.rewrites)
    finally:
        for m, mode in modes.items():
            m.training = mode
    graph.build_s = time.perf_counter() - start
    return graph


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and keeps only each node's output shape(s) in ``node.meta["hw_shape"]``.

    Cheaper than ShapeProp (which also extracts strides, contiguity and quantisation metadata).
    """

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        record_shape(n, out)
        return out


def record_shape(node: fx.Node, value) -> None:
    """Keep ``value``'s shape (a tuple; a list of them for several outputs) in ``node.meta["hw_shape"]``."""
    if isinstance(value, torch.Tensor):
        node.meta["hw_shape"] = tuple(int(s) for s in value.shape)
    elif isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value):
        node.meta["hw_shape"] = [tuple(int(s) for s in v.shape) if isinstance(v, torch.Tensor) else None for v in value]
    else:
        node.meta.pop("hw_shape", None)


def _propagate_shapes(gm: fx.GraphModule, example_input: torch.Tensor, name: str) -> None:
    try:
        with torch.no_grad():
            _ShapeRecorder(gm).run(example_input)
    except Exception as exc:  # the model's own error, for this input shape
        cause = exc.__cause__ or exc
        first = first_line(cause)
        raise HwpruneError(
            f"{name} does not run on an input of shape {tuple(example_input.shape)} ({first}): "
            "check --input-size and --in-channels"
        ) from exc


def _visit(ctx: MapContext, node: fx.Node):
    if node.op == "placeholder":
        shape = ctx.shape(node)
        return fixed_label(len(shape)) if shape is not None else None
    if node.op == "get_attr":
        return param_label(ctx, node.target, node)
    if node.op == "output":
        ctx.freeze_output(node)
        return None
    return ctx.apply(node, find_handler(node, ctx.module_or_none(node)))


def param_label(ctx: MapContext, name: str, node: fx.Node):
    """Parameter ``name`` used directly: channels along its last non-trivial axis, tied where it meets others.

    A buffer is a constant table (rotary frequencies, a position grid): fixed, so it freezes the channels
    it meets along its own full-size axes and never ties channels across heads it is broadcast over.
    """
    tensor = ctx.tensors.get(name)
    if tensor is None or not isinstance(tensor, torch.Tensor):
        return None
    shape = tuple(tensor.shape)
    axes = [d for d, s in enumerate(shape) if s > 1]
    if not axes or not tensor.is_floating_point() or not isinstance(tensor, nn.Parameter):
        return fixed_label(len(shape))
    axis = axes[-1]
    atoms = ctx.atoms.new(shape[axis])
    ctx.site(name, axis, atoms, PARAM, node)  # a second use of it is tied to the first
    return channel_shaped(atoms, len(shape), axis)
