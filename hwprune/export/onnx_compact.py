"""Apply a ChannelMask to an ONNX-built ChannelGraph: the masked model, the compacted model, a verified file.

The ONNX counterpart of :mod:`hwprune.export.compact`, working from the same sites and rewrite
records (:func:`~hwprune.export.compact.keep_table`). The masked model keeps every shape and
zeroes the removed channels' weights; the compacted model slices every initializer along every
changed site, sets the attributes that count channels (a depthwise Conv's ``group``, a per-channel
GroupNormalization's ``num_groups``) and rewrites the size arguments the mapper recorded
(Reshape/Expand/Resize sizes, Split sizes, Slice bounds, Gather indices) as new initializers.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from hwprune.errors import EquivalenceError, VerificationError, first_line
from hwprune.export.compact import changed_sites, keep_table, kept, kept_sizes, kept_split_sizes, shrink, zero_removed
from hwprune.export.large_onnx import check_model, infer_shapes, save_onnx
from hwprune.export.onnx_export import ort_session
from hwprune.export.verify import DEFAULT_TOLERANCE, max_rel_diff, nonfinite_summary, vacuity
from hwprune.files import check_writable, staged
from hwprune.graph_mapper.onnx_mapper import (
    build_onnx_channel_graph,
    opset_of,
    random_feeds,
    remove_dead_code,
    running_statistics,
)
from hwprune.graph_mapper.onnx_ops import DEFAULT_DOMAINS, SIZE_INPUT, node_resizer, set_attr
from hwprune.graph_mapper.rewrites import LayerNormRewrite, ShapeRewrite, SplitRewrite
from hwprune.graph_mapper.types import ChannelGraph, Site
from hwprune.prune.masks import ChannelMask


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _set_initializers(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name in arrays:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arrays[t.name], t.name))


def _by_tensor(graph: ChannelGraph, keep: np.ndarray) -> dict[str, list[tuple[Site, np.ndarray]]]:
    out: dict[str, list[tuple[Site, np.ndarray]]] = defaultdict(list)
    for site, k in changed_sites(graph, keep):
        out[site.tensor].append((site, k))
    return out


# ----------------------------------------------------------------------------- masked


def masked_onnx(graph: ChannelGraph, mask: ChannelMask) -> onnx.ModelProto:
    """The graph's model with the removed channels' weights zeroed; every shape unchanged.

    Running statistics of BatchNormalization are left alone, as the PyTorch masked model leaves
    buffers: the zeroed scale and shift already silence the channel.
    """
    mask.validate(graph)
    model = _copy(graph.gm)
    stats = running_statistics(model)
    inits = {t.name: t for t in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}
    for name, entries in _by_tensor(graph, keep_table(graph, mask)).items():
        if name in stats:
            continue
        w = arrays.setdefault(name, numpy_helper.to_array(inits[name]).copy())
        for site, k in entries:
            zero_removed(w, site, k)
    _set_initializers(model, arrays)
    return model


# ----------------------------------------------------------------------------- compacted


def compact_onnx(graph: ChannelGraph, mask: ChannelMask) -> onnx.ModelProto:
    """A smaller model computing what the masked model computes on exact groups (checked by onnx.checker).

    Pruning an inexact group (a LayerNorm or GroupNorm sees it) changes what the kept channels
    compute, as in :func:`hwprune.export.compact.compact_model`.
    """
    mask.validate(graph)
    keep = keep_table(graph, mask)
    model = _copy(graph.gm)
    inits = {t.name: t for t in model.graph.initializer}
    old_shapes = {name: tuple(t.dims) for name, t in inits.items()}
    arrays = {}
    for name, entries in _by_tensor(graph, keep).items():
        arrays[name] = shrink(torch.from_numpy(numpy_helper.to_array(inits[name]).copy()), entries).numpy()
    _set_initializers(model, arrays)
    _resize_nodes(model, old_shapes, {n: a.shape for n, a in arrays.items()})
    _rewrite_nodes(model, graph, keep)
    remove_dead_code(model)  # the size initializers that were replaced
    del model.graph.value_info[:]
    strict = all(n.domain in DEFAULT_DOMAINS for n in model.graph.node)  # custom ops have no shape functions
    try:
        model = infer_shapes(model, strict_mode=strict)
        check_model(model)
    except Exception as exc:  # checker and inference raise several types
        raise VerificationError(f"compacted {graph.model_name} is not a valid ONNX model: {first_line(exc)}") from exc
    return model


def _resize_nodes(model: onnx.ModelProto, old: dict, new: dict) -> None:
    """Each node reading a changed initializer takes its handler's compaction step (``resized_by``)."""
    for node in model.graph.node:
        resize = node_resizer(node)
        if resize is not None and any(name in new for name in node.input):
            resize(node, old, new)


def _const(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def _set_input(model: onnx.ModelProto, node: onnx.NodeProto, i: int, value: np.ndarray) -> None:
    """Point input ``i`` of ``node`` at a new initializer of its own (the old one may be shared)."""
    names = {t.name for t in model.graph.initializer}
    name = f"{node.name}_input{i}_compacted"
    while name in names:
        name += "_"
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    while len(node.input) <= i:
        node.input.append("")
    node.input[i] = name


def _rewrite_nodes(model: onnx.ModelProto, graph: ChannelGraph, keep: np.ndarray) -> None:
    nodes = {n.name: n for n in model.graph.node}
    norms = {name: r for name, r in graph.rewrites.items() if isinstance(r, LayerNormRewrite)}
    for name, record in graph.rewrites.items():
        node = nodes[name]
        if name in norms:
            continue
        if isinstance(record, ShapeRewrite):
            _rewrite_sizes(model, node, kept(record.labels, keep))
        elif isinstance(record, SplitRewrite):
            _rewrite_split(model, node, kept(record.labels, keep), record.sizes)
        elif node.op_type == "Gather":  # a SliceRewrite of one index
            ((_, roots),) = record.slices
            _rewrite_gather(model, node, kept(roots, keep))
        else:
            _rewrite_slice(model, node, [(pos, kept(roots, keep)) for pos, roots in record.slices])
    for name, record in norms.items():  # last: each rebuilds the node list (earlier node references go stale)
        _zero_pad_layer_norm(model, name, kept(record.labels, keep), record.rank)


def _zero_pad_layer_norm(model: onnx.ModelProto, name: str, k: np.ndarray, rank: int) -> None:
    """LayerNormalization over ``h`` kept of ``n`` channels, exact: Pad (zeros to ``n``), the norm, Slice (``h``).

    Its statistics are then those of the masked model's input, whose removed channels are zero; the scale and
    bias are padded with ones and zeros (those outputs are sliced away). Keeps the fused norm kernel.
    """
    h, n = int(k.sum()), k.size
    if h == n:
        return
    node = next(m for m in model.graph.node if m.name == name)
    names = {t.name for t in model.graph.initializer}

    def constant(suffix: str, value: np.ndarray) -> str:
        name = f"{node.name}_{suffix}"
        while name in names:
            name += "_"
        names.add(name)
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    for i, fill in ((1, 1.0), (2, 0.0)):
        if len(node.input) > i and node.input[i]:
            kept_values = _const(model, node.input[i])
            _set_input(model, node, i, np.concatenate([kept_values, np.full(n - h, fill, kept_values.dtype)]))
    pads = np.zeros(2 * rank, dtype=np.int64)
    pads[2 * rank - 1] = n - h  # at the end of the last axis
    x, out = node.input[0], node.output[0]
    padded, normed = f"{node.name}_zero_padded", f"{node.name}_over_width"
    pad = onnx.helper.make_node("Pad", [x, constant("pads", pads)], [padded], name=f"{node.name}_pad")
    cut = onnx.helper.make_node(
        "Slice",
        [normed, constant("start", np.array([0])), constant("stop", np.array([h])), constant("axis", np.array([-1]))],
        [out],
        name=f"{node.name}_kept",
    )
    norm = onnx.NodeProto()
    norm.CopyFrom(node)
    norm.input[0], norm.output[0] = padded, normed
    order = list(model.graph.node)
    at = next(i for i, m in enumerate(order) if m.name == name)
    order[at : at + 1] = [pad, norm, cut]
    del model.graph.node[:]
    model.graph.node.extend(order)


def _rewrite_sizes(model: onnx.ModelProto, node: onnx.NodeProto, k: np.ndarray) -> None:
    """Write the kept count along every axis where channels vary (-1 entries stay inferred)."""
    i = SIZE_INPUT[node.op_type]
    sizes = _const(model, node.input[i]).copy()
    offset = sizes.size - k.ndim
    for d, size in kept_sizes(k).items():
        if sizes[d + offset] != -1:
            sizes[d + offset] = size
    _set_input(model, node, i, sizes)


def _rewrite_split(model: onnx.ModelProto, node: onnx.NodeProto, k: np.ndarray, sizes) -> None:
    new = np.asarray(kept_split_sizes(k, sizes), dtype=np.int64)
    if opset_of(model) < 13:
        set_attr(node, "split", new.tolist())
        return
    kept_attrs = [a for a in node.attribute if a.name != "num_outputs"]
    del node.attribute[:]
    node.attribute.extend(kept_attrs)
    _set_input(model, node, 1, new)


def _rewrite_slice(model: onnx.ModelProto, node: onnx.NodeProto, entries) -> None:
    """New bounds for the slice entries along channel axes: kept channels before start and stop."""
    starts, ends = _const(model, node.input[1]).copy(), _const(model, node.input[2]).copy()
    for j, k in entries:
        start, stop, _ = slice(int(starts[j]), int(ends[j])).indices(k.size)
        starts[j], ends[j] = int(k[:start].sum()), int(k[:stop].sum())
    _set_input(model, node, 1, starts)
    _set_input(model, node, 2, ends)


def _rewrite_gather(model: onnx.ModelProto, node: onnx.NodeProto, k: np.ndarray) -> None:
    """Constant indices into a channel axis: drop the removed ones, renumber the kept ones."""
    idx = _const(model, node.input[1]) % k.size
    picked = k[idx]
    axes_keep = [picked.any(axis=tuple(a for a in range(idx.ndim) if a != d)) for d in range(idx.ndim)]
    grid = np.ix_(*axes_keep)
    if not picked[grid].all() or picked.sum() != picked[grid].size:
        raise VerificationError(f"cannot compact Gather {node.name}: its kept indices do not form a rectangle")
    new_pos = np.cumsum(k) - 1
    _set_input(model, node, 1, new_pos[idx][grid].astype(idx.dtype))


# ----------------------------------------------------------------------------- file to file


@dataclass
class OnnxPruneReport:
    """What :func:`prune_onnx_file` wrote and how well it matched the masked model."""

    model: str
    onnx_path: str
    params_before: int
    params_after: int
    max_rel_diff: float | None  # compacted vs masked in onnxruntime (None when inexact groups were pruned)
    groups_pruned: int
    channel_density: float
    notes: list[str] = field(default_factory=list)
    random_max_rel_diff: float | None = None  # the same, both compacted/masked from randomised initializers
    check_seed: int | None = None  # seed of the randomised initializers (None: not checked on them)

    def table(self) -> str:
        ratio = self.params_after / self.params_before if self.params_before else 1.0
        lines = [
            f"## {self.model}: compacted ONNX",
            "",
            "| | before | after | ratio |",
            "|---|---:|---:|---:|",
            f"| params | {self.params_before:,} | {self.params_after:,} | {ratio:.3f} |",
            "",
            f"Groups pruned: {self.groups_pruned}; channel density over prunable groups {self.channel_density:.3f}.",
        ]
        if self.max_rel_diff is not None:
            line = "Compacted vs masked model in onnxruntime: max relative difference "
            line += f"{self.max_rel_diff:.2e} on your weights"
            if self.random_max_rel_diff is not None:
                line += f", {self.random_max_rel_diff:.2e} on randomised weights (seed {self.check_seed})"
            lines.append(line + ".")
        lines.append(f"Written to {self.onnx_path}")
        return "\n".join(lines + [f"Note: {n}" for n in self.notes])


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}


def float_params(model: onnx.ModelProto) -> int:
    """Elements of the floating-point initializers that are tensors (weights, not scalar constants)."""
    sizes = [math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOATS]
    return sum(n for n in sizes if n > 1)


def run_model(path: str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort_session(path).run(None, feeds)


def check_finite_initializers(model: onnx.ModelProto, what: str) -> None:
    """Refuse a model with a non-finite floating-point initializer, naming the first one."""
    for t in model.graph.initializer:
        if t.data_type in _FLOATS:
            bad = nonfinite_summary(numpy_helper.to_array(t))
            if bad:
                raise VerificationError(
                    f"{what}: initializer {t.name} has non-finite values ({bad}); no equivalence can be proved on "
                    "it: fix or retrain the weights before pruning"
                )


# (op, input index) reading a vector additively: any sign is safe there (shifts, biases, means)
_ADDITIVE_INPUTS = {
    ("BatchNormalization", 2),
    ("BatchNormalization", 3),
    ("Conv", 2),
    ("ConvTranspose", 2),
    ("Gemm", 2),
}


def randomized_onnx_graph(graph: ChannelGraph, seed: int = 0) -> ChannelGraph:
    """The same graph over a copy of its model whose channel-carrying initializers are random.

    Every floating-point initializer that a site names gets random values: tensors of two or more
    axes ``randn * sqrt(2 / fan_in)`` (a ReLU network keeps its scale, so an early error is not lost
    with depth; networks gated by SiLU or sigmoid still fade: the torch check rescales layer by layer,
    this one has no activations to measure without running the file node by node); vectors read only
    additively (biases, BatchNormalization shift and mean, anything only added) ``0.1 * randn``;
    every other vector (scales, variances, layer scale: any op may read them) values in [0.5, 1.5),
    positive. Compacting this copy with the same mask exercises exactly what compacting the original
    does, on channels that all differ.
    """
    model = _copy(graph.gm)
    names = {s.tensor for s in graph.sites}
    uses: dict[str, set] = defaultdict(set)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            uses[name].add((node.op_type, "*" if node.op_type in ("Add", "Sub") else i))
    rng = np.random.default_rng(seed)
    arrays = {}
    for t in model.graph.initializer:
        if t.name not in names or t.data_type not in _FLOATS:
            continue
        a = numpy_helper.to_array(t)
        if a.ndim >= 2:
            matmul = any(op == "MatMul" for op, _ in uses[t.name])  # [in, out]
            fan_in = a.shape[-2] if matmul else math.prod(a.shape[1:])
            values = rng.standard_normal(a.shape) * math.sqrt(2 / max(fan_in, 1))  # He: ReLU keeps the scale
        elif uses[t.name] and all(u in _ADDITIVE_INPUTS or u[1] == "*" for u in uses[t.name]):
            values = rng.standard_normal(a.shape) * 0.1
        else:
            values = rng.random(a.shape) + 0.5
        arrays[t.name] = values.astype(a.dtype)
    _set_initializers(model, arrays)
    return replace(graph, gm=model)


def prune_onnx_file(
    src,
    mask: ChannelMask,
    dst: str | Path,
    input_shape=None,
    tolerance: float = DEFAULT_TOLERANCE,
    seed: int = 0,
    graph: ChannelGraph | None = None,
    *,
    randomized: bool = True,
) -> OnnxPruneReport:
    """Compact ``src`` with ``mask``, check it against the masked model in onnxruntime, write ``dst``.

    ``dst`` is written only when the check passes (through a temporary file renamed into place).
    Pass ``graph`` when it was already built from ``src`` (at ``input_shape``). The check runs on the
    file's weights and (``randomized``) on a copy whose channel-carrying initializers are random,
    compacted and masked with the same graph and mask, so it cannot pass vacuously; non-finite
    initializers or reference outputs and a zero or constant reference fail it with one line.
    """
    dst = check_writable(dst)
    graph = graph or build_onnx_channel_graph(src, input_shape=input_shape)
    mask.validate(graph)
    check_finite_initializers(graph.gm, graph.model_name)
    compacted = compact_onnx(graph, mask)
    inexact = [graph.groups[g].name for g in mask.pruned_groups() if not graph.groups[g].exact]
    feeds = random_feeds(graph.gm, seed)
    diff, random_diff, notes = None, None, []
    name = graph.model_name
    with staged(dst) as tmp:
        save_onnx(compacted, tmp)
        if inexact:
            notes.append(f"inexact groups pruned ({', '.join(inexact[:3])}): not compared with the masked model")
        else:
            diff, vacuous = _compare_with_masked(graph, mask, tmp, feeds, tolerance)
            if not diff <= tolerance:
                raise EquivalenceError(
                    f"compacted {name} differs from the masked model by {diff:.2e} in onnxruntime on your weights "
                    f"(relative, tolerance {tolerance:.0e}); nothing was written: this is a mapper bug, please "
                    "report it with the model and mask",
                    diff,
                )
            if randomized:
                random_diff = _compare_randomized(graph, mask, feeds, tolerance, seed)
                if vacuous:
                    notes.append(
                        f"the masked model's output on your weights is {vacuous}, so that comparison could not fail; "
                        "equivalence rests on the randomised-weights check"
                    )
            elif vacuous:
                raise VerificationError(
                    f"cannot verify compacted {name}: the masked model's output on your weights is {vacuous}, so no "
                    "comparison against it can fail; nothing was written"
                )
    return OnnxPruneReport(
        model=name,
        onnx_path=str(dst),
        params_before=float_params(graph.gm),
        params_after=float_params(compacted),
        max_rel_diff=diff,
        groups_pruned=len(mask.pruned_groups()),
        channel_density=mask.channel_density(graph),
        notes=notes,
        random_max_rel_diff=random_diff,
        check_seed=seed if random_diff is not None else None,
    )


def _run_pair(name: str, compacted_path: Path, masked_path: Path, feeds: dict) -> tuple[list, list]:
    """(compacted outputs, masked outputs) in onnxruntime."""
    try:
        return run_model(compacted_path, feeds), run_model(masked_path, feeds)
    except Exception as exc:  # onnxruntime raises its own types (custom ops, unsupported kernels)
        raise VerificationError(
            f"onnxruntime cannot run {name} to verify it ({first_line(exc)[:200]}); nothing was written"
        ) from exc


def _compare_with_masked(
    graph: ChannelGraph, mask: ChannelMask, compacted_path: Path, feeds: dict, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[float, str | None]:
    """Compacted file vs the masked model on the file's weights: the difference and why it is vacuous (or None)."""
    with tempfile.TemporaryDirectory(prefix="hwprune-onnx-") as tmp:
        masked_path = Path(tmp) / "masked.onnx"
        save_onnx(masked_onnx(graph, mask), masked_path)
        actual, reference = _run_pair(graph.model_name, compacted_path, masked_path, feeds)
    bad = nonfinite_summary(reference)
    if bad:
        raise VerificationError(
            f"the masked {graph.model_name}'s output on your weights is not finite ({bad}): no equivalence can be "
            "proved on it; check the weights; nothing was written"
        )
    return max_rel_diff(actual, reference), vacuity(reference, tolerance)


def _compare_randomized(graph: ChannelGraph, mask: ChannelMask, feeds: dict, tolerance: float, seed: int) -> float:
    """The same compaction and masking of a copy with random initializers, compared in onnxruntime."""
    name = graph.model_name
    random_graph = randomized_onnx_graph(graph, seed)
    with tempfile.TemporaryDirectory(prefix="hwprune-onnx-") as tmp:
        compacted_path, masked_path = Path(tmp) / "compacted.onnx", Path(tmp) / "masked.onnx"
        save_onnx(compact_onnx(random_graph, mask), compacted_path)
        save_onnx(masked_onnx(random_graph, mask), masked_path)
        actual, reference = _run_pair(name, compacted_path, masked_path, feeds)
    vacuous = vacuity(reference, tolerance)
    if vacuous:
        raise VerificationError(
            f"cannot verify compacted {name}: the masked model's output is {vacuous} even on randomised weights "
            f"(seed {seed}), so no comparison against it can fail; nothing was written"
        )
    diff = max_rel_diff(actual, reference)
    if not diff <= tolerance:
        raise EquivalenceError(
            f"compacted {name} differs from the masked model by {diff:.2e} in onnxruntime on randomised weights "
            f"(seed {seed}; relative, tolerance {tolerance:.0e}); nothing was written: this is a mapper bug, please "
            "report it with the model and mask",
            diff,
        )
    return diff
