"""A latency measurement and the protocol that takes it, shared by every backend."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass(frozen=True)
class Measurement:
    """Latency of one runner: robust statistics plus everything needed to reproduce it."""

    backend: str
    median_ms: float
    iqr_ms: float
    samples: int
    rejected: int
    threads: int
    batch: int
    input_shape: tuple[int, ...]
    device: str
    provider: str
    versions: dict = field(default_factory=dict)
    samples_ms: tuple[float, ...] = field(default=(), repr=False)  # in timing order (rounds interleaved)

    def as_dict(self) -> dict:
        return asdict(self)


def paired_delta_ms(baseline: Measurement, candidate: Measurement) -> float:
    """Median of round-by-round differences baseline - candidate: drift common to a round cancels."""
    n = min(len(baseline.samples_ms), len(candidate.samples_ms))
    if n == 0:
        return baseline.median_ms - candidate.median_ms
    return float(np.median(np.subtract(baseline.samples_ms[:n], candidate.samples_ms[:n])))


def robust_stats(samples_s: list[float]) -> tuple[float, float, int]:
    """Median and IQR in ms after dropping samples outside Tukey's fences (1.5 IQR)."""
    ms = np.asarray(samples_s) * 1e3
    q1, q3 = np.percentile(ms, [25, 75])
    fence = 1.5 * (q3 - q1)
    kept = ms[(ms >= q1 - fence) & (ms <= q3 + fence)]
    q1, q3 = np.percentile(kept, [25, 75])
    return float(np.median(kept)), float(q3 - q1), int(ms.size - kept.size)


def warm_up(timed: Callable[[], float], min_runs: int = 3, max_runs: int = 30, tol: float = 0.05) -> None:
    """Run until the median of the last three timings moves by less than ``tol``.

    ``timed`` runs once and returns its seconds (host clock, or the device's own, e.g. CUDA events).
    """
    times: list[float] = []
    last = None
    for i in range(max_runs):
        times.append(timed())
        if i + 1 >= min_runs:
            med = float(np.median(times[-3:]))
            if last is not None and abs(med - last) <= tol * last:
                return
            last = med


def time_interleaved(timers: list[Callable[[], float]], repeats: int) -> list[list[float]]:
    """Time several runners in turn, ``repeats`` rounds, so drift hits them all alike."""
    for timed in timers:
        warm_up(timed)
    samples: list[list[float]] = [[] for _ in timers]
    for _ in range(repeats):
        for i, timed in enumerate(timers):
            samples[i].append(timed())
    return samples


def host_timer(run: Callable[[], object]) -> Callable[[], float]:
    """Seconds of one call of ``run`` on the host clock (valid when ``run`` waits for its device)."""

    def timed() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    return timed


def host_device() -> str:
    return f"cpu:{platform.processor() or platform.machine()}"
