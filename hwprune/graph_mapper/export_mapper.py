"""torch.export front-end: capture the model as an ATen program, propagate channel labels, assemble the graph.

torch.export captures what symbolic tracing cannot: Python control flow on shapes, dict or dataclass
outputs (flattened into leaves, every one of them an output), parameters' ``.dtype`` read in
``forward``. Shapes come from the program's fake tensors (``node.meta["val"]``), so no real forward
pass runs and the build time does not grow with the input resolution.

Parameters arrive as placeholders; the graph signature names the module attribute each one is, so
sites name the user's own tensors (``layer1.0.conv1.weight``) exactly as the fx front-end does.
Compaction then slices the user's module itself (``graph.gm`` is that module) and resizes its
layers; a size baked into the module's Python code (``x.view(-1, 512)``) cannot follow and is caught by
the equivalence check that follows every compaction, never shipped.

Ops are handled by :mod:`hwprune.graph_mapper.aten_ops`; an op without a handler freezes every
channel reaching it, naming the op and the node.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import fx, nn

from hwprune.errors import HwpruneError, first_line
from hwprune.graph_mapper.atoms import fixed_label
from hwprune.graph_mapper.fx_mapper import MapContext, _flat, param_label, record_shape
from hwprune.graph_mapper.types import ChannelGraph


class ExportContext(MapContext):
    """What handlers see for an exported program: placeholders resolved to the module's tensor names."""

    def __init__(self, program: torch.export.ExportedProgram, model: nn.Module, batch: int = 1) -> None:
        super().__init__(program.graph_module)
        signature = program.graph_signature
        self.fqn: dict[str, str] = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
        self.modules = {}
        self.use_tensors(model)  # the signature names a tied tensor (an embedding shared with the head) once
        self.batch = max(1, batch)  # of the example input: MAC counts are per example

    def tensor_name(self, arg) -> str | None:
        """The module attribute a placeholder stands for (``layer1.0.conv1.weight``), None for anything else."""
        return self.fqn.get(arg.name) if isinstance(arg, fx.Node) and arg.op == "placeholder" else None

    def label(self, arg):
        name = self.tensor_name(arg)
        if name is not None and arg.name not in self.labels:  # a tensor used as an operand, not as a weight
            self.labels[arg.name] = param_label(self, name, arg)
        return super().label(arg)

    def op_text(self, node: fx.Node) -> str:
        return op_display(node)

    def weight_of(self, node: fx.Node) -> torch.Tensor | None:
        """The first argument that is a module tensor of two or more dimensions (a conv or linear weight)."""
        weights = [self.tensors[n] for a in node.all_input_nodes if (n := self.tensor_name(a)) is not None]
        return next((w for w in weights if w.dim() >= 2), None)

    def freeze_inputs(self, node: fx.Node, reason: str) -> None:
        for arg in node.all_input_nodes:
            if self.tensor_name(arg) is not None and arg.name not in self.labels:
                continue  # a weight never labelled carries no atoms
            for label in _flat(self.labels.get(arg.name)):
                if isinstance(label, np.ndarray):
                    self.atoms.freeze(label, reason)


def op_display(node: fx.Node) -> str:
    """``aten.conv2d`` for an ATen op overload, the function's name otherwise."""
    packet = getattr(node.target, "overloadpacket", None)
    return f"aten.{packet.__name__}" if packet is not None else getattr(node.target, "__name__", str(node.target))


def capture(model: nn.Module, example_input: torch.Tensor, name: str) -> torch.export.ExportedProgram:
    """``torch.export.export`` (non-strict) in eval mode; one line naming the model when it cannot."""
    try:
        with torch.no_grad():
            return torch.export.export(model, (example_input,), strict=False)
    except Exception as exc:  # export raises many types (user errors, unsupported ops, guards)
        raise HwpruneError(f"torch.export cannot capture {name}: {first_line(exc)}") from exc


def build_channel_graph_export(model: nn.Module, example_input: torch.Tensor, name: str | None = None) -> ChannelGraph:
    """Map ``model`` to its channel groups from its torch.export program (``graph.gm`` is ``model``)."""
    from hwprune.graph_mapper import aten_ops  # registers the handlers; imported late, it imports this module

    start = time.perf_counter()
    name = name or type(model).__name__
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        program = capture(model, example_input, name)
    finally:
        for m, mode in modes.items():
            m.training = mode
    gm = program.graph_module
    for node in gm.graph.nodes:  # shapes from the fake values, where the fx front-end runs a forward pass
        record_shape(node, node.meta.get("val"))
    ctx = ExportContext(program, model, example_input.shape[0] if example_input.dim() else 1)
    regions = aten_ops.module_regions(ctx, gm)
    for node in gm.graph.nodes:
        region = regions.get(node.name)
        if region is not None:  # a module mapped as one op: its first node maps all of its nodes
            if region.nodes[0] is node:
                aten_ops.visit_region(ctx, region)
        elif ctx.tensor_name(node) is None:  # parameters and buffers are labelled on first use as operands
            ctx.labels[node.name] = aten_ops.visit(ctx, node)
    # the module's own code recomputes sizes: the program's literals are not what runs, so no rewrites
    graph = ctx.graph(name, tuple(example_input.shape), model, {})
    graph.build_s = time.perf_counter() - start
    return graph


def placeholder_label(ctx: ExportContext, node: fx.Node):
    """A model input (or a lifted constant): fixed channels."""
    shape = ctx.shape(node)
    return fixed_label(len(shape)) if shape is not None else None
