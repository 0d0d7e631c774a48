"""The edge-profile LUT: measured latency change per channel group, with what it was measured on.

A LUT is only valid for the model structure, input shape, batch, backend and threads it was
measured with; :meth:`LUT.check` refuses any other use with the reason.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hwprune.checks import read_format_json
from hwprune.errors import HwpruneError
from hwprune.files import write_atomically

LUT_FORMAT = "hwprune.lut/1"


@dataclass(frozen=True)
class EdgePoint:
    """One group shrunk to ``kept`` of its channels, timed against the dense baseline."""

    group: int
    name: str
    size: int
    kept: int
    point: float  # requested kept fraction
    baseline_ms: float
    latency_ms: float
    iqr_ms: float
    macs_before: float
    macs_after: float
    passes: int = 1  # measurements (passes over the groups) this point is the median of

    @property
    def delta_ms(self) -> float:
        return self.baseline_ms - self.latency_ms

    @property
    def multiplier(self) -> float:
        """GATOR's multiplier: % latency drop / % FLOPs drop (nan when FLOPs do not move)."""
        flops_drop = 1.0 - self.macs_after / self.macs_before
        return (self.delta_ms / self.baseline_ms) / flops_drop if flops_drop > 0 else float("nan")


@dataclass
class LUT:
    meta: dict
    points: list[EdgePoint] = field(default_factory=list)
    calibration: list[dict] = field(default_factory=list)  # random whole-network masks: shares, timings, op_ms
    kernels: dict = field(default_factory=dict)  # kernel table: weight -> per axis {axis, counts, ms} (kernel_table.py)

    KEYS = ("model", "fingerprint", "input_shape", "backend", "threads")

    def check(self, **expected) -> None:
        """Refuse use with another model, structure, input shape/batch, backend or thread count."""
        for key, value in expected.items():
            have = self.meta.get(key)
            if key == "input_shape":
                have, value = list(have or []), list(value)
            if have != value:
                what = "batch/input shape" if key == "input_shape" else key
                raise HwpruneError(
                    f"LUT {self.meta.get('path', '')} was measured with {what} {have}, not {value}: "
                    "profile again for this setting (hwprune profile-edges)"
                )

    def by_group(self) -> dict[int, list[EdgePoint]]:
        out: dict[int, list[EdgePoint]] = {}
        for p in self.points:
            out.setdefault(p.group, []).append(p)
        for pts in out.values():
            pts.sort(key=lambda p: p.kept, reverse=True)
        return out

    @property
    def baseline_ms(self) -> float:
        """The dense model's median latency over the measurements (edge points, else calibration masks)."""
        import statistics

        return statistics.median([p.baseline_ms for p in self.points] or [c["baseline_ms"] for c in self.calibration])

    def save(self, path: str | Path) -> None:
        """JSON (complete) plus a CSV twin of the points next to it."""
        path = Path(path)
        data = {
            "format": LUT_FORMAT,
            "meta": self.meta,
            "points": [asdict(p) for p in self.points],
            "calibration": self.calibration,
            **({"kernels": self.kernels} if self.kernels else {}),
        }
        write_atomically(path, json.dumps(data, indent=1).encode())
        buf = io.StringIO()
        writer = csv.writer(buf)
        cols = list(EdgePoint.__dataclass_fields__) + ["delta_ms", "multiplier"]
        writer.writerow(cols)
        for p in self.points:
            writer.writerow([getattr(p, c) for c in cols])
        write_atomically(path.with_suffix(".csv"), buf.getvalue().encode())

    @classmethod
    def load(cls, path: str | Path) -> LUT:
        """Read a LUT file, checked against its schema (``hwprune.checks.lut_document``)."""
        from hwprune.checks import lut_document

        data = read_format_json(path, LUT_FORMAT, "LUT", ": create it with hwprune profile-edges")
        lut_document(data, path)
        meta = dict(data["meta"], path=str(path))
        return cls(meta, [EdgePoint(**p) for p in data["points"]], data.get("calibration", []), data.get("kernels", {}))
