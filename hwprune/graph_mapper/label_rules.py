"""Front-end independent label rules: how channel labels pass through the common op kinds.

A rule takes labels (see :mod:`hwprune.graph_mapper.atoms`) and concrete shapes, never a graph node
of one front-end, so the torch.fx handlers and the ONNX handlers can share one implementation of
each semantic (broadcast alignment, reshape ties, concatenation, convolution sites, ...).
:class:`LabelRecorder` holds what every mapping pass accumulates: the atom table, the sites and the
rewrite records that compaction reads.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from hwprune.graph_mapper.assemble import RawSite
from hwprune.graph_mapper.atoms import (
    AtomTable,
    Frozen,
    channel_vector,
    compact,
    fixed_label,
    labelled,
    right_align,
    varying_dims,
)
from hwprune.graph_mapper.rewrites import Rewrite, ShapeRewrite, SliceRewrite, SplitRewrite
from hwprune.graph_mapper.types import CONSUMER, GROUPED_IN, PARAM, PLAIN, PRODUCER


class LabelRecorder:
    """Atoms, sites, block constraints and rewrite records of one mapping pass.

    Subclasses say how to find the label and the shape of an operand (``label``, ``shape``); nodes
    are anything with a ``name`` (an fx node, an ONNX NodeProto).
    """

    def __init__(self) -> None:
        self.atoms = AtomTable()
        self.labels: dict[str, object] = {}
        self.sites: list[RawSite] = []
        self.rewrites: dict[str, Rewrite] = {}
        self.block_constraints: list[tuple[str, np.ndarray]] = []
        self.unmapped_macs: dict[str, int] = {}  # weighted ops no handler mapped: they still count in coverage
        self._site_index: dict[tuple[str, int], int] = {}
        self.aliases: dict[str, str] = {}  # every name of a tied tensor -> the name its sites are recorded under

    def record_unmapped(self, node, weight_numel: int, out_shape) -> None:
        """Count an op with a weight that no handler mapped (weight x output positions multiply-adds).

        They stay in the coverage denominator, so freezing an op never makes the prunable share look larger.
        """
        positions = math.prod(out_shape[2:]) if out_shape is not None and len(out_shape) > 2 else 1
        self.unmapped_macs[node.name] = int(weight_numel) * positions

    def label(self, arg):
        raise NotImplementedError

    def shape(self, arg) -> tuple[int, ...] | None:
        raise NotImplementedError

    def site(self, tensor, axis, atoms, role, node, kind=PLAIN, conv_groups=1, macs=0) -> None:
        """Record that ``tensor``'s ``axis`` carries ``atoms``; a tensor used twice ties both uses."""
        atoms = np.asarray(atoms, dtype=np.int64)
        tensor = self.aliases.get(tensor, tensor)
        index = self._site_index.get((tensor, axis))
        if index is not None:  # shared weights: one tensor, one set of channels
            seen = self.sites[index]
            if seen.atoms.shape != atoms.shape or ((seen.atoms < 0) != (atoms < 0)).any():
                self.atoms.freeze(np.concatenate([seen.atoms, atoms]), f"{tensor} is used with different channels")
            self.atoms.union(seen.atoms, atoms)
            if seen.role == PARAM and role != PARAM:  # met as an operand first, then by the op that uses it
                self.sites[index] = RawSite(tensor, axis, seen.atoms, role, node.name, kind, conv_groups, macs)
            elif macs > seen.macs:  # a tied table met first as an embedding (no MACs), then as the output head
                self.sites[index] = dataclasses.replace(seen, macs=macs)
            return
        self._site_index[(tensor, axis)] = len(self.sites)
        self.sites.append(RawSite(tensor, axis, atoms, role, node.name, kind, conv_groups, macs))

    def channel_labels(self, node, arg, dim: int, size: int, what: str) -> np.ndarray | None:
        """The atom of each channel along ``dim`` of ``arg``; None (and freeze) if it has none."""
        label = self.label(arg)
        if isinstance(label, Frozen) or label is None:
            return None
        label = right_align(label, len(self.shape(arg)))
        vec = channel_vector(label, dim)
        if vec is None:
            self.atoms.freeze(label, f"{what} at {node.name}: channels vary along other axes")
            return None
        return np.broadcast_to(vec, (size,)).copy()

    def new_frozen(self, n: int, reason: str) -> np.ndarray:
        atoms = self.atoms.new(n)
        self.atoms.freeze(atoms, reason)
        return atoms

    def keep_equal_per_block(self, atoms: np.ndarray, what: str) -> None:
        """``atoms`` [blocks, n]: a mask must keep the same number of channels in every block."""
        self.block_constraints.append((what, np.asarray(atoms, dtype=np.int64)))

    def record_rewrite(self, node, rewrite: Rewrite) -> None:
        """The one way a handler asks compaction to change a node (see :mod:`hwprune.graph_mapper.rewrites`)."""
        self.rewrites[node.name] = rewrite

    def record_shape_rewrite(self, node, out_label: np.ndarray) -> None:
        self.record_rewrite(node, ShapeRewrite(out_label))

    def record_split_rewrite(self, node, vec: np.ndarray, dim: int, sizes: list[int]) -> None:
        self.record_rewrite(node, SplitRewrite(vec, dim, sizes))

    def record_slice_rewrite(self, node, slices: list) -> None:
        self.record_rewrite(node, SliceRewrite(slices))


def freeze_all(atoms: AtomTable, labels: Sequence, reason: str) -> None:
    for label in labels:
        if isinstance(label, np.ndarray):
            atoms.freeze(label, reason)


# ----------------------------------------------------------------------------- weights


def conv_sites(rec: LabelRecorder, node, in_vec, weight: str, bias, groups: int, c_in: int, c_out: int, macs: int):
    """Sites of a convolution; returns the atoms of its output channels.

    A depthwise conv (one input channel per group, ``c_out // groups`` outputs each) passes its
    input channels on, so the weight's rows belong to the input's groups; any other conv creates
    new channels and reads its input through its columns (per conv group when grouped).
    """
    cin_g, cout_g = c_in // groups, c_out // groups
    if groups > 1 and cin_g == 1:
        vec = in_vec if in_vec is not None else rec.new_frozen(c_in, f"input of {weight} is frozen")
        out = np.repeat(vec, cout_g)
        rec.site(weight, 0, out, PRODUCER, node, macs=macs)
        if bias:
            rec.site(bias, 0, out, PRODUCER, node)
        return out
    if in_vec is not None:
        kind = GROUPED_IN if groups > 1 else PLAIN
        rec.site(weight, 1, in_vec, CONSUMER, node, kind=kind, conv_groups=groups, macs=macs)
    out = rec.atoms.new(c_out)
    rec.site(weight, 0, out, PRODUCER, node, conv_groups=groups, macs=macs)
    if bias:
        rec.site(bias, 0, out, PRODUCER, node, conv_groups=groups)
    return out


def linear_sites(rec: LabelRecorder, node, in_vec, weight: str, out_axis: int, n_out: int, macs: int, bias=None):
    """Sites of a dense layer whose weight has the outputs on ``out_axis`` and the inputs on the other."""
    if in_vec is not None:
        rec.site(weight, 1 - out_axis, in_vec, CONSUMER, node, macs=macs)
    out = rec.atoms.new(n_out)
    rec.site(weight, out_axis, out, PRODUCER, node, macs=macs)
    if bias is not None:
        name, axis = bias
        rec.site(name, axis, out, PRODUCER, node)
    return out


def embedding_sites(rec: LabelRecorder, node, weight: str, width: int, out_ndim: int) -> np.ndarray:
    """A lookup table ``[rows, width]``: each column is a new channel of the output's last axis."""
    atoms = rec.atoms.new(width)
    rec.site(weight, 1, atoms, PRODUCER, node)
    return channel_shaped(atoms, out_ndim, -1)


def param_sites(rec: LabelRecorder, node, vec: np.ndarray, tensors, conv_groups: int = 1) -> None:
    """Per-channel parameters riding along a channel axis (norm scales and shifts)."""
    for tensor in tensors:
        rec.site(tensor, 0, vec, PARAM, node, conv_groups=conv_groups)


def channel_shaped(vec: np.ndarray, ndim: int, dim: int = 1) -> np.ndarray:
    """A label carrying ``vec`` along ``dim`` of an ``ndim``-dimensional tensor."""
    return vec.reshape(tuple(-1 if d == dim % ndim else 1 for d in range(ndim)))


# ----------------------------------------------------------------------------- elementwise


def align(atoms: AtomTable, operands: list, out_shape: Sequence[int], what: str):
    """Elementwise op over broadcast operands ``[(label, shape)]``: positions that meet are tied.

    An operand that is full-size along the axes where channels vary ties its labels to the
    others'; a fixed (unlabelled) full-size operand freezes the channels it meets, because its
    size cannot shrink with them. A Frozen operand (or one the front-end could not follow, label
    None) freezes everything.
    """
    nd = len(out_shape)
    labels = [lab for lab, _ in operands]
    blocked = next((lab for lab in labels if isinstance(lab, Frozen) or lab is None), False)
    if blocked is not False:
        reason = blocked.reason if isinstance(blocked, Frozen) else f"{what} combines channels with an untracked tensor"
        freeze_all(atoms, labels, reason)
        return Frozen(reason)
    ops = [(right_align(lab, nd), (1,) * (nd - len(shape)) + tuple(shape)) for lab, shape in operands]
    if not ops:
        return fixed_label(nd)
    joint = tuple(max(lab.shape[d] for lab, _ in ops) for d in range(nd))
    vary = [d for d in range(nd) if joint[d] > 1]
    full = [lab for lab, shape in ops if all(shape[d] == out_shape[d] for d in vary)]
    if any(labelled(lab) and not all(shape[d] == out_shape[d] for d in vary) for lab, shape in ops):
        reason = f"{what} broadcasts channels across axes"
        freeze_all(atoms, labels, reason)
        return Frozen(reason)
    stack = np.stack([np.broadcast_to(lab, joint) for lab in full])
    clash = (stack < 0).any(0) & (stack >= 0).any(0)
    if clash.any():
        atoms.freeze(stack[:, clash], f"{what} combines channels with a fixed-size tensor")
    for lab in stack[1:]:
        atoms.union(stack[0], lab)
    return compact(stack.max(0))


# ----------------------------------------------------------------------------- structure


def tie_outer_axes(atoms: AtomTable, label: np.ndarray, what: str) -> None:
    """Channels varying along several axes: only the innermost may shrink, the outer ones are tied.

    A channel shuffle's [g, C/g] view or a heads x head-dim split keeps a product structure: every
    outer index must keep the same inner channels so that the tensor stays rectangular.
    """
    vary = varying_dims(label)
    if len(vary) < 2:
        return
    inner = vary[-1]
    moved = np.moveaxis(np.broadcast_to(label, label.shape), inner, -1).reshape(-1, label.shape[inner])
    fixed = (moved < 0).any(0) & (moved >= 0).any(0)
    if fixed.any():
        atoms.freeze(moved[:, fixed], f"{what} mixes fixed and prunable channels")
    for row in moved[1:]:
        atoms.union(moved[0], row)


def reshape(
    atoms: AtomTable, label: np.ndarray, in_shape, out_shape, what: str, inferred: int | None = None
) -> np.ndarray | Frozen:
    """Reshape the label with the tensor; a channel axis split in several keeps a product structure.

    By default only the innermost axis may shrink (:func:`tie_outer_axes`). When the code leaves an outer
    axis's size to be inferred (``inferred``: the axis written ``-1``, as in ``view(b, s, -1, head_dim)``),
    that axis shrinks instead, in whole blocks (:func:`shrink_whole_blocks`): whole attention heads.
    """
    if not labelled(label):
        return fixed_label(len(out_shape))
    full = np.broadcast_to(right_align(label, len(in_shape)), tuple(in_shape)).reshape(tuple(out_shape))
    out = compact(full)
    vary = varying_dims(out)
    if inferred is not None and len(vary) > 1 and inferred % len(out_shape) in vary[:-1]:
        return shrink_whole_blocks(atoms, out, inferred % len(out_shape), what)
    tie_outer_axes(atoms, out, what)
    return out


def shrink_whole_blocks(atoms: AtomTable, label: np.ndarray, axis: int, what: str) -> np.ndarray | Frozen:
    """Channels varying along several axes, of which only ``axis`` may shrink: each index of it is one unit.

    Every other axis keeps its size (the code names it), so all channels at one index of ``axis`` (a whole
    head: its ``head_dim`` channels) are removed together.
    """
    moved = np.moveaxis(np.broadcast_to(label, label.shape), axis, 0).reshape(label.shape[axis], -1)
    merged = merge_blocks(atoms, moved, what)
    if isinstance(merged, Frozen):
        return merged
    return channel_shaped(merged, label.ndim, axis)


def concat(atoms: AtomTable, labels: list, shapes: list, dim: int, out_shape, what: str):
    """Concatenation: channel vectors are joined along ``dim``, or tied when they live on another axis."""
    nd = len(out_shape)
    dim %= nd
    if any(isinstance(lab, Frozen) or lab is None for lab in labels):
        freeze_all(atoms, labels, "concatenated with a frozen tensor")
        return Frozen("concatenated with a frozen tensor")
    labels = [right_align(lab, nd) for lab in labels]
    if any(d != dim for lab in labels for d in varying_dims(lab)):
        if any(lab.shape[dim] > 1 for lab in labels):
            reason = f"{what} along axis {dim} of tensors whose channels vary on another axis"
            freeze_all(atoms, labels, reason)
            return Frozen(reason)
        # the channels live on another axis (e.g. a class token before the patch tokens): every
        # operand carries the same channels there, so they are tied position by position
        return align(atoms, list(zip(labels, shapes, strict=True)), out_shape, what)
    vec = np.concatenate([np.broadcast_to(lab.reshape(-1), (s[dim],)) for lab, s in zip(labels, shapes, strict=True)])
    return channel_shaped(vec, nd, dim)


def merge_blocks(atoms: AtomTable, blocks: np.ndarray, what: str) -> np.ndarray | Frozen:
    """Depth-to-space: the atoms of each row of ``blocks`` become one output channel (one atom per row).

    A row that mixes fixed and prunable positions cannot shrink as a whole: everything is frozen.
    """
    if ((blocks < 0).any(axis=1) & (blocks >= 0).any(axis=1)).any():
        reason = f"{what} merges fixed and prunable channels"
        atoms.freeze(blocks, reason)
        return Frozen(reason)
    for i in range(1, blocks.shape[1]):
        atoms.union(blocks[:, 0], blocks[:, i])
    return blocks[:, 0].copy()


def tile(label: np.ndarray, reps) -> np.ndarray:
    """Tiling: an axis where channels vary carries them ``reps[d]`` times; the factors never change."""
    label = right_align(label, len(reps))
    return np.tile(label, [r if label.shape[d] > 1 else 1 for d, r in enumerate(reps)])


def split(label: np.ndarray, in_shape, dim: int, sizes: list[int]):
    """Pieces of a split along ``dim`` and the channel vector there (None when channels are elsewhere).

    Returns None when channels vary along ``dim`` and another axis (no rectangular rewrite exists).
    """
    nd = len(in_shape)
    dim %= nd
    label = right_align(label, nd)
    if label.shape[dim] == 1:
        return [label for _ in sizes], None
    if [d for d in varying_dims(label) if d != dim]:
        return None
    vec = label.reshape(-1)
    bounds = np.cumsum([0] + list(sizes))
    pieces = [compact(channel_shaped(vec[a:b], nd, dim)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return pieces, vec


def reduce(atoms: AtomTable, label: np.ndarray, nd: int, dims, keep: bool, out_nd: int, what: str) -> np.ndarray:
    """A reduction over ``dims``: over channels it freezes them, elsewhere they pass."""
    dims = [d % nd for d in dims]
    label = right_align(label, nd)
    if any(label.shape[d] > 1 for d in dims):
        atoms.freeze(label, f"{what} reduces over channels")
        return fixed_label(out_nd)
    return label if keep else label.reshape([s for d, s in enumerate(label.shape) if d not in dims])


def normalise_over(atoms: AtomTable, label: np.ndarray, nd: int, dims, what: str) -> np.ndarray:
    """Softmax-like ops couple every position of ``dims``: channels there are frozen."""
    label = right_align(label, nd)
    if any(label.shape[d % nd] > 1 for d in dims):
        atoms.freeze(label, f"{what} normalises across channels")
    return label


# ----------------------------------------------------------------------------- products of activations


def unfrozen(atoms: AtomTable, label: np.ndarray) -> np.ndarray:
    """Frozen atoms never leave their axis, so a product may treat them as fixed positions."""
    frozen = np.isin(label, np.fromiter(atoms.frozen, dtype=np.int64, count=len(atoms.frozen)))
    return np.where(frozen, -1, label) if frozen.any() else label


def tie_contraction(atoms: AtomTable, ca: np.ndarray, cb: np.ndarray, what: str) -> bool:
    """Union the atoms that meet in a contraction; a labelled atom meeting a fixed one freezes both."""
    ca, cb = np.broadcast_arrays(ca, cb)
    clash = (ca >= 0) != (cb >= 0)
    if clash.any():
        atoms.freeze(np.concatenate([ca[clash], cb[clash]]), f"{what} contracts channels with fixed ones")
        return False
    atoms.union(ca, cb)
    return True


def matmul(atoms: AtomTable, la: np.ndarray, lb: np.ndarray, out_nd: int, what: str):
    """Product of two activations ``a [..., n, m] @ b [..., m, p]`` (right-aligned labels).

    Scores ``q @ k^T``: both operands vary along the contracted axis (query and key dimensions);
    those that meet are one channel (removing a pair of zero entries leaves every score
    unchanged) and the result carries no channel. Weighted values ``attn @ v``: one operand
    carries no channel and the other's channels pass to the result. Returns None for anything
    else (the caller fails closed).
    """
    la, lb = unfrozen(atoms, la), unfrozen(atoms, lb)
    if la.shape[-1] > 1 and lb.shape[-2] > 1 and la.shape[-2] == 1 and lb.shape[-1] == 1:
        if not tie_contraction(atoms, la[..., 0, :], lb[..., :, 0], what):
            return Frozen(f"{what} contracts channels with fixed ones")
        return fixed_label(out_nd)
    if not labelled(la) and lb.shape[-2] == 1:
        return right_align(lb, out_nd)
    if not labelled(lb) and la.shape[-1] == 1:
        return right_align(la, out_nd)
    return None


def _einsum_spec(equation: str) -> tuple[list[str], str] | None:
    """Operand and output subscripts of an explicit einsum equation (spaces allowed), else None."""
    eq = equation.replace(" ", "")
    if "->" not in eq or "." in eq:
        return None
    inputs, output = eq.split("->")
    return inputs.split(","), output


def _to_letters(label: np.ndarray, letters: str, space: str) -> np.ndarray:
    """View ``label`` (axes named by ``letters``) in the axis order of ``space`` (size 1 where absent)."""
    order = [letters.index(c) for c in space if c in letters]
    moved = np.transpose(label, order)
    return moved.reshape([label.shape[letters.index(c)] if c in letters else 1 for c in space])


def einsum(atoms: AtomTable, equation: str, la: np.ndarray, lb: np.ndarray, what: str):
    """Two-operand einsum with the two rules of :func:`matmul`; None when they do not apply."""
    spec = _einsum_spec(equation)
    if spec is None or len(spec[0]) != 2:
        return None
    (sa, sb), out = spec
    la, lb = unfrozen(atoms, la), unfrozen(atoms, lb)
    space = "".join(dict.fromkeys(sa + sb + out))
    ga, gb = _to_letters(la, sa, space), _to_letters(lb, sb, space)
    vary_a = {space[d] for d in range(len(space)) if ga.shape[d] > 1}
    vary_b = {space[d] for d in range(len(space)) if gb.shape[d] > 1}
    contracted, shared = set(sa + sb) - set(out), set(sa) & set(sb)
    if vary_a & contracted and vary_b & contracted and vary_a <= shared and vary_b <= shared:
        if not tie_contraction(atoms, ga, gb, what):
            return Frozen(f"{what} contracts channels with fixed ones")
        return fixed_label(len(out))
    for fixed_side, g, vary in ((la, gb, vary_b), (lb, ga, vary_a)):
        if not labelled(fixed_side) and not vary & contracted:  # weighted values: channels pass through
            kept = "".join(c for c in space if c in out)
            return compact(_to_letters(g.reshape([g.shape[space.index(c)] for c in kept]), kept, out))
    return None
