"""Predict a mask's latency from an edge-profile LUT: a per-op cost model fitted to the measurements.

    latency(mask) / dense latency = fixed + sum over conv/linear ops o of theta_o * MACs_o(mask) / MACs

An op's MACs are the product of the kept shares of its channel axes, so groups interact as the
network does (a conv whose input and output both shrink loses their product). theta_o is the op's
time per multiply-add relative to the network's, fitted by non-negative least squares to every
whole-network measurement the LUT holds: each profiled point (one group shrunk, several kept
fractions), the calibration masks (every group shrunk at once) and the dense model itself.
Single-group points measure only the sum over the ops a group touches, so each theta_o is pulled
(ridge, weighted by the op's MACs share) toward the theta of its op class (depthwise, pointwise,
k x k conv, linear), fitted first; the ridge's strength is the one that best predicts each
calibration mask left out of the fit. The calibration masks matter: ResNet-50 on ONNX Runtime runs
6 % faster shrunk all over than its single-group points add up to (likely cache effects).

With per-op timings (``profile-edges --per-op``: each calibration record holds every op's own time,
reported by the backend), the per-op terms are fitted from them directly: op o took
``c_o + b_o * MACs_o(mask) / MACs`` ms in each profiled run (non-negative least squares over the
records), so theta_o = k * b_o / baseline, where ``fixed`` and one scale ``k`` (profiled vs unprofiled
time, and time outside conv/linear ops, which grows with them) are fitted to the whole-network ratios.
Every mask then informs every op, and masks interact only through each op's own widths.

A kernel table (``profile-edges --kernel-table``: each op timed alone over the channel counts of the
alignment grid) replaces an op's MAC fraction by its measured time ratio, for backends whose time is
jagged in channel count (:mod:`hwprune.latency.kernel_table`).

Why not the measured per-group curves added up: each point carries ~1 % timing noise, and summing
25-37 of them for one mask added that noise up; on the same measurements the fitted model was
within 5 % for more held-out masks on every model tried (see the latency issue's notes).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from hwprune.errors import HwpruneError
from hwprune.graph_mapper.cost import CostModel
from hwprune.graph_mapper.types import ChannelGraph
from hwprune.latency.kernel_table import KernelRatios
from hwprune.latency.lut import LUT

DEFAULT_RIDGE = 0.3  # the best on held-out masks of resnet18/50 and mobilenet_v2 (ort-cpu)
RIDGES = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)  # tried by leave-one-out over the calibration masks


def op_classes(graph: ChannelGraph) -> dict[str, str]:
    """Per weight tensor: depthwise, pointwise, conv (k x k) or linear, kinds whose time per MAC differs."""
    # a depthwise weight [C, 1, k, k] carries its channels on axis 0 only (input passes through);
    # a plain conv on a one-channel input has an (unprunable) input site on axis 1
    has_input_axis = {s.tensor for s in graph.sites if s.axis == 1}
    out = {}
    for name, weight in graph.parameters().items():
        shape = tuple(weight.shape)
        if len(shape) != 4:
            out[name] = "linear"
        elif shape[1] == 1 and name not in has_input_axis:
            out[name] = "depthwise"
        else:
            out[name] = "pointwise" if shape[2] * shape[3] == 1 else "conv"
    return out


def _output_activation_shares(graph: ChannelGraph, costs: CostModel, ops: list[str]) -> np.ndarray:
    """Per op, the elements of its output as a share of all ops' outputs: what norms and activations after it touch.

    An output's elements are the op's MACs over its weight's elements per output row (C_out x H x W for a conv).
    """
    params = graph.parameters()
    sizes = []
    for t in ops:
        shape = tuple(params[t].shape) if t in params else ()
        per_row = float(np.prod(shape[1:])) if len(shape) > 1 else 1.0
        sizes.append(costs.tensors[t]["macs"] / per_row)
    sizes = np.asarray(sizes)
    return sizes / sizes.sum() if sizes.sum() else sizes


class LatencyModel:
    """Predicted latency (ms) of kept shares per group, from a LUT and the graph it was measured on."""

    def __init__(self, lut: LUT, graph: ChannelGraph, ridge: float | None = None) -> None:
        lut.check(fingerprint=graph.fingerprint())
        self.baseline_ms = lut.baseline_ms
        self.costs = CostModel(graph)
        self.kernels = KernelRatios(lut.kernels, self.costs)
        self.ops = [t for t, e in self.costs.tensors.items() if e["macs"] > 0]
        self._index = {t: i for i, t in enumerate(self.ops)}
        self.share = np.array([self.costs.tensors[t]["macs"] for t in self.ops]) / self.costs.total_macs
        kinds = op_classes(graph)
        classes = [kinds[t] for t in self.ops]
        self._member = np.array([[c == n for n in sorted(set(classes))] for c in classes], dtype=float)
        self.per_op = bool(lut.calibration) and all("op_ms" in c for c in lut.calibration)
        # time outside conv/linear ops (norms, activations, adds: eager PyTorch runs them apart) follows the
        # channels the ops write: one term per op, its output activation's share times its kept output share
        self.activation = self.per_op and all("rest_ms" in c for c in lut.calibration)
        self.act_share = _output_activation_shares(graph, self.costs, self.ops)
        points = [({p.group: p.kept / p.size}, p.latency_ms / p.baseline_ms) for p in lut.points]
        points += [({}, 1.0)] * 3  # the dense model: weighted as a LUT group's three points
        calibration = [
            ({int(g): v for g, v in c["shares"].items()}, c["latency_ms"] / c["baseline_ms"]) for c in lut.calibration
        ]
        x_pts = np.array([self._features(s) for s, _ in points])
        x_cal = np.array([self._features(s) for s, _ in calibration]).reshape(len(calibration), x_pts.shape[1])
        y_pts, y_cal = np.array([r for _, r in points]), np.array([r for _, r in calibration])
        if self.per_op:
            op_ms = np.array([[c["op_ms"].get(t, np.nan) for t in self.ops] for c in lut.calibration])
            rest_ms = np.array([c.get("rest_ms", np.nan) for c in lut.calibration])
            timings = np.c_[op_ms, rest_ms]
            self.ridge = None
            self.loo_errors_pct = self._loo_errors_per_op(x_pts, y_pts, x_cal, y_cal, timings)
            self.fixed, self.theta = self._fit_per_op(np.vstack([x_pts, x_cal]), np.r_[y_pts, y_cal], x_cal, timings)
        else:
            self.ridge, self.loo_errors_pct = self._choose_ridge(x_pts, y_pts, x_cal, y_cal, ridge)
            self.fixed, self.theta = self._fit(np.vstack([x_pts, x_cal]), np.r_[y_pts, y_cal], self.ridge)

    def _fraction(self, tensor: str, shares: dict[int, float]) -> float:
        """How much of its dense cost an op keeps: its kernel table's time ratio, else its MAC fraction."""
        if tensor in self.kernels:
            return self.kernels.ratio(tensor, shares)
        return self.costs.fraction(tensor, shares)

    def _op_terms(self, tensor: str, shares: dict[int, float]) -> tuple[float, float]:
        """(kept share of the op's cost, kept share of its output channels) under ``shares``."""
        return self._fraction(tensor, shares), self.costs.axis_fraction(tensor, 0, shares)

    def _features(self, shares: dict[int, float]) -> np.ndarray:
        """Per op: its MACs share times the share of its cost it keeps under ``shares``.

        With the activation term, then per op: its output activation's share times its kept output share.
        """
        terms = np.array([self._op_terms(t, shares) for t in self.ops]).reshape(len(self.ops), 2)
        macs = self.share * terms[:, 0]
        return np.r_[macs, self.act_share * terms[:, 1]] if self.activation else macs

    def _fit(self, features: np.ndarray, ratios: np.ndarray, ridge: float) -> tuple[float, np.ndarray]:
        """Non-negative least squares, each op's deviation from its class's time per MAC penalised."""
        per_class = nnls(np.c_[np.ones(len(ratios)), features @ self._member], ratios)[0]
        prior = self._member @ per_class[1:]
        weight = np.sqrt(ridge) * self.share  # a deviation weighs as the share of latency it moves
        a = np.vstack([np.c_[np.ones(len(ratios)), features], np.c_[np.zeros(len(weight)), np.diag(weight)]])
        solution = nnls(a, np.r_[ratios, weight * prior])[0]
        return float(solution[0]), solution[1:]

    def _op_slopes(self, x_cal: np.ndarray, op_ms: np.ndarray) -> np.ndarray:
        """Per op, ms per unit of its MACs share: ``op_ms = c + b * x`` fitted over the records (b >= 0).

        An op no record timed, or whose width never changed, takes the median slope of its class
        (of all ops when its class has none).
        """
        slopes = np.full(len(self.ops), np.nan)
        for i in range(len(self.ops)):
            seen = ~np.isnan(op_ms[:, i])
            x, t = x_cal[seen, i], op_ms[seen, i]
            if seen.sum() >= 2 and np.ptp(x) > 1e-3 * self.share[i]:
                slopes[i] = nnls(np.c_[np.ones(len(x)), x], t)[0][1]
        known = ~np.isnan(slopes)
        if not known.any():
            raise HwpruneError("the LUT's per-op timings name none of this model's ops: profile it again")
        for i in np.flatnonzero(~known):
            same = known & (self._member[:, self._member[i].argmax()] > 0)
            slopes[i] = np.median(slopes[same if same.any() else known])
        return slopes

    def _fit_per_op(self, features, ratios, x_cal, timings) -> tuple[float, np.ndarray]:
        """``ratio = fixed + k * (sum_o b_o x_o + u * sum_o a_o)`` by least squares.

        The per-op slopes b come from the op timings; the activation slope u from the time outside the
        ops (``rest_ms = c + u * sum_o a_o``, NNLS).
        """
        n = len(self.ops)
        weights = self._op_slopes(x_cal[:, :n], timings[:, :n])
        if self.activation:
            act = x_cal[:, n:].sum(1)
            u = nnls(np.c_[np.ones(len(act)), act], timings[:, n])[0][1] if np.ptp(act) > 0 else 0.0
            weights = np.r_[weights, np.full(n, u)]
        (fixed, k), *_ = np.linalg.lstsq(np.c_[np.ones(len(ratios)), features @ weights], ratios, rcond=None)
        return float(fixed), k * weights

    def _loo_errors_per_op(self, x_pts, y_pts, x_cal, y_cal, timings) -> np.ndarray:
        """Relative error (%) on each calibration mask of a per-op fit that left it (and its timings) out."""
        errors = []
        for k in range(len(y_cal)):
            rest = np.arange(len(y_cal)) != k
            fixed, theta = self._fit_per_op(
                np.vstack([x_pts, x_cal[rest]]), np.r_[y_pts, y_cal[rest]], x_cal[rest], timings[rest]
            )
            errors.append(((fixed + theta @ x_cal[k]) / y_cal[k] - 1.0) * 100.0)
        return np.asarray(errors)

    def _loo_errors(self, x_pts, y_pts, x_cal, y_cal, ridge: float) -> np.ndarray:
        """Relative error (%) on each calibration mask of a fit that left it out."""
        errors = []
        for k in range(len(y_cal)):
            rest = np.arange(len(y_cal)) != k
            fixed, theta = self._fit(np.vstack([x_pts, x_cal[rest]]), np.r_[y_pts, y_cal[rest]], ridge)
            errors.append(((fixed + theta @ x_cal[k]) / y_cal[k] - 1.0) * 100.0)
        return np.asarray(errors)

    def _choose_ridge(self, x_pts, y_pts, x_cal, y_cal, ridge: float | None) -> tuple[float, np.ndarray]:
        """The ridge and its held-out errors (%) on the calibration masks.

        ``ridge`` if given, else the one of RIDGES whose fits best predict each mask left out;
        DEFAULT_RIDGE and no errors with fewer than two calibration masks.
        """
        if len(y_cal) < 2:
            return (DEFAULT_RIDGE if ridge is None else ridge), np.zeros(0)
        tried = RIDGES if ridge is None else (ridge,)
        errors = {r: self._loo_errors(x_pts, y_pts, x_cal, y_cal, r) for r in tried}
        best = min(errors, key=lambda r: float(np.sum(errors[r] ** 2)))
        return best, errors[best]

    def fit_summary(self) -> str:
        """One line on how well the model predicts masks it was not fitted to (the calibration masks)."""
        e = np.abs(self.loo_errors_pct)
        if not e.size:
            return "latency model: no calibration masks, so no held-out check (profile with --calibration-masks)"
        return (
            f"latency model: on {e.size} calibration masks, each left out of its fit, error median "
            f"{np.median(e):.1f} %, max {e.max():.1f} %, {np.mean(e <= 5) * 100:.0f} % within 5 % "
            + ("(per-op timings)" if self.per_op else f"(ridge {self.ridge})")
        )

    def predict(self, shares: dict[int, float]) -> float:
        """Predicted latency (ms) for kept shares per group (groups not listed keep everything)."""
        return self.baseline_ms * (self.fixed + float(self.theta @ self._features(shares)))

    def predict_change(self, shares: dict[int, float], gid: int, new_share: float) -> float:
        """Predicted latency change (ms, negative = faster) when group ``gid`` moves to ``new_share``."""
        after = {**shares, gid: new_share}
        n, change = len(self.ops), 0.0
        for tensor in self.costs.tensors_of(gid):
            i = self._index.get(tensor)
            if i is not None:
                (cost0, out0), (cost1, out1) = self._op_terms(tensor, shares), self._op_terms(tensor, after)
                change += self.theta[i] * self.share[i] * (cost1 - cost0)
                if self.activation:
                    change += self.theta[n + i] * self.act_share[i] * (out1 - out0)
        return self.baseline_ms * change
