"""Channel atoms and the label arrays that carry them through a graph.

Every channel a producer (conv, linear, per-channel parameter) creates is an *atom*. A tensor's
*label* is an int64 numpy array, broadcastable to the tensor's shape, naming the atom of each
element (-1: a fixed element that no pruning removes, e.g. the network input). Labels are kept
*compact*: a dimension along which the label does not vary has size 1, so a [N, 256, 56, 56]
activation carries a [1, 256, 1, 1] label. Ops that tie channels together (residual add, SE mul)
union atoms; the connected components become channel groups.

Anything an op cannot account for freezes the atoms involved, with a reason: fail closed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FIXED = -1


@dataclass(frozen=True)
class Frozen:
    """Label of a tensor produced by an op we cannot see through: nothing here may be pruned."""

    reason: str


class AtomTable:
    """Union-find over atoms, with per-atom freeze and inexact reasons."""

    def __init__(self) -> None:
        self._parent = np.zeros(0, dtype=np.int64)
        self.frozen: dict[int, str] = {}
        self.inexact: dict[int, str] = {}

    def __len__(self) -> int:
        return int(self._parent.shape[0])

    def new(self, n: int) -> np.ndarray:
        start = len(self)
        self._parent = np.concatenate([self._parent, np.arange(start, start + n, dtype=np.int64)])
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self._parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return int(a)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union atoms position by position; FIXED positions are skipped (callers check them)."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        keep = (a >= 0) & (b >= 0) & (a != b)
        if not keep.any():
            return
        pairs = np.unique(np.stack([a[keep], b[keep]], axis=1), axis=0)
        for x, y in pairs.tolist():
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)

    def freeze(self, atoms: np.ndarray, reason: str) -> None:
        for a in np.unique(np.asarray(atoms)).tolist():
            if a >= 0:
                self.frozen.setdefault(a, reason)

    def mark_inexact(self, atoms: np.ndarray, reason: str) -> None:
        for a in np.unique(np.asarray(atoms)).tolist():
            if a >= 0:
                self.inexact.setdefault(a, reason)

    def roots(self) -> np.ndarray:
        """Root of every atom (pointer jumping until stable)."""
        parent = self._parent.copy()
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                return parent
            parent = nxt


def compact(label: np.ndarray) -> np.ndarray:
    """Shrink every dimension along which ``label`` does not vary to size 1."""
    for d in range(label.ndim):
        if label.shape[d] > 1:
            first = label.take([0], axis=d)
            if label.strides[d] == 0 or np.array_equal(np.broadcast_to(first, label.shape), label):
                label = first
    return np.ascontiguousarray(label)


def varying_dims(label: np.ndarray) -> list[int]:
    return [d for d in range(label.ndim) if label.shape[d] > 1]


def right_align(label: np.ndarray, ndim: int) -> np.ndarray:
    return label.reshape((1,) * (ndim - label.ndim) + label.shape)


def fixed_label(ndim: int) -> np.ndarray:
    return np.full((1,) * ndim, FIXED, dtype=np.int64)


def labelled(label: np.ndarray) -> bool:
    return bool((label >= 0).any())


def channel_vector(label: np.ndarray, dim: int) -> np.ndarray | None:
    """The labels along ``dim`` when the label varies along no other dimension, else None."""
    others = [d for d in varying_dims(label) if d != dim % label.ndim]
    if others:
        return None
    return label.reshape(-1) if label.shape[dim] > 1 else label.reshape(-1)[:1]
