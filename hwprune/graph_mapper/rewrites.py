"""Rewrite records: the size constants in a model's code that compaction must change, one type per kind.

The mapper records them with channel labels (atoms); :func:`hwprune.graph_mapper.assemble.assemble` turns the
labels into group roots (``with_roots``); each compactor (fx: ``export/compact.py``, ONNX:
``export/onnx_compact.py``) rewrites its nodes from them, and ``root_arrays`` lists what a record depends on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

ToRoots = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ShapeRewrite:
    """A reshape/view whose sizes along channel axes are the kept counts (``labels``: the output's)."""

    labels: np.ndarray

    def with_roots(self, to_roots: ToRoots) -> ShapeRewrite:
        return replace(self, labels=to_roots(self.labels))

    def root_arrays(self) -> list[np.ndarray]:
        return [self.labels]


@dataclass(frozen=True)
class LayerNormRewrite:
    """A layer norm over channel axis ``labels`` of a ``rank``-dim input, exact once compacted.

    The compacted norm normalises over the original width, the removed channels counted as zeros
    (:mod:`hwprune.layers`).
    """

    labels: np.ndarray
    rank: int

    def with_roots(self, to_roots: ToRoots) -> LayerNormRewrite:
        return replace(self, labels=to_roots(self.labels))

    def root_arrays(self) -> list[np.ndarray]:
        return [self.labels]


@dataclass(frozen=True)
class SplitRewrite:
    """A split/chunk along ``dim`` whose piece ``sizes`` shrink with the kept channels of ``labels``."""

    labels: np.ndarray
    dim: int
    sizes: list[int]

    def with_roots(self, to_roots: ToRoots) -> SplitRewrite:
        return replace(self, labels=to_roots(self.labels))

    def root_arrays(self) -> list[np.ndarray]:
        return [self.labels]


@dataclass(frozen=True)
class SliceRewrite:
    """Slice bounds on channel axes: per index position, the labels of the axis sliced there."""

    slices: list[tuple[int, np.ndarray]]

    def with_roots(self, to_roots: ToRoots) -> SliceRewrite:
        return replace(self, slices=[(pos, to_roots(np.asarray(vec))) for pos, vec in self.slices])

    def root_arrays(self) -> list[np.ndarray]:
        return [vec for _, vec in self.slices]


@dataclass(frozen=True)
class KwargsRewrite:
    """Keyword values fixed at mapping time (e.g. an attention scale that must not follow the new width)."""

    kwargs: dict

    def with_roots(self, to_roots: ToRoots) -> KwargsRewrite:
        return self

    def root_arrays(self) -> list[np.ndarray]:
        return []


@dataclass(frozen=True)
class AttentionRewrite:
    """Window attention with explicit per-head widths of query/key (``qk``) and value (``v``) channels."""

    qk: np.ndarray
    v: np.ndarray
    heads: int
    scale: float

    def with_roots(self, to_roots: ToRoots) -> AttentionRewrite:
        return replace(self, qk=to_roots(self.qk), v=to_roots(self.v))

    def root_arrays(self) -> list[np.ndarray]:
        return [self.qk, self.v]


Rewrite = ShapeRewrite | SplitRewrite | SliceRewrite | KwargsRewrite | AttentionRewrite


def resized_by(resize: Callable) -> Callable:
    """Decorator for an op handler: ``resize`` is its op's compaction step beyond slicing tensors.

    The handler that maps an op is the one that knows which of its attributes count channels, so it
    carries their fix-up (``handler.resize``) and the compactors find it through the op registry
    instead of a type switch of their own. fx handlers of module types: ``resize(module, shrunk)``
    with ``shrunk`` the module's changed tensors by relative name (each a list of ``(Site, kept)``),
    returning a replacement module or None; ONNX handlers: ``resize(node, old_shapes, new_shapes)``
    setting the node's attributes from its initializers' shapes before and after.
    """

    def attach(handler: Callable) -> Callable:
        handler.resize = resize
        return handler

    return attach
