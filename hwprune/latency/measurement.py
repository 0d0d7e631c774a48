"""A latency measurement and the protocol that takes it, shared by every backend."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

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
    other_load: float | None = None  # CPU cores other processes used, on average, while this was timed

    def as_dict(self) -> dict:
        return asdict(self)


def paired_delta_ms(baseline: Measurement, candidate: Measurement) -> float:
    """Median of round-by-round differences baseline - candidate: drift common to a round cancels."""
    n = min(len(baseline.samples_ms), len(candidate.samples_ms))
    if n == 0:
        return baseline.median_ms - candidate.median_ms
    return float(np.median(np.subtract(baseline.samples_ms[:n], candidate.samples_ms[:n])))


def paired_ratio(baseline: Measurement, candidate: Measurement) -> tuple[float, float]:
    """Candidate / baseline latency from the paired differences, and that ratio's standard error.

    The ratio is 1 - ``paired_delta_ms`` / baseline median (drift common to a round cancels); its error is
    the standard error of the median difference relative to the baseline median.
    """
    ratio = 1.0 - paired_delta_ms(baseline, candidate) / baseline.median_ms
    n = min(len(baseline.samples_ms), len(candidate.samples_ms))
    if n < 2:
        return ratio, float("inf")
    diffs = np.subtract(baseline.samples_ms[:n], candidate.samples_ms[:n])
    return ratio, float(median_stderr(diffs) / baseline.median_ms)


SESSIONS = 5  # independent runner pairs a latency ratio is averaged over (see LatencyRatio)


@dataclass(frozen=True)
class LatencyRatio:
    """Candidate / baseline latency over independent runner pairs (fresh sessions) timed in one interleaved run.

    Why several pairs: on onnxruntime CPU, fresh sessions of the very same file time up to 8 % apart (memory
    placement), and the ratio of a fresh pair moves by about 1 % sd (resnet18 pruned to 50 % of its FLOPs, six
    pairs in one run), more than one pair's own interval shows: a closed loop that stopped at +0.9 % shipped a
    file that timed +4.5 % in the next pair. The ratio is the mean over pairs; its 95 % interval comes from their
    spread (Student's t), and is never narrower than the pairs' own rounds allow.
    """

    baselines: tuple[Measurement, ...]
    candidates: tuple[Measurement, ...]

    @property
    def per_session(self) -> list[tuple[float, float]]:
        """Each pair's paired ratio and its standard error."""
        return [paired_ratio(b, c) for b, c in zip(self.baselines, self.candidates, strict=True)]

    @property
    def ratio(self) -> float:
        return float(np.mean([r for r, _ in self.per_session]))

    @property
    def ci95(self) -> float:
        """Half-width of the ratio's 95 % interval (inf when it cannot be told)."""
        ratios, errors = (np.asarray(v) for v in zip(*self.per_session, strict=True))
        k = ratios.size
        within = 1.96 * float(np.sqrt(np.mean(errors**2) / k))
        if k == 1:
            return within
        from scipy.stats import t

        between = float(t.ppf(0.975, k - 1) * ratios.std(ddof=1) / np.sqrt(k))
        return max(within, between)

    @property
    def baseline(self) -> Measurement:
        return pooled(self.baselines)

    @property
    def candidate(self) -> Measurement:
        return pooled(self.candidates)

    @property
    def other_load(self) -> float | None:
        return self.candidates[0].other_load  # one run: every runner saw the same load


def pooled(measurements: tuple[Measurement, ...]) -> Measurement:
    """One runner's statistics over several sessions' rounds (samples kept session after session)."""
    samples = [v for m in measurements for v in m.samples_ms]
    median, iqr, rejected = robust_stats([v / 1e3 for v in samples])
    return replace(measurements[0], median_ms=median, iqr_ms=iqr, samples=len(samples), rejected=rejected,
                   samples_ms=tuple(samples))  # fmt: skip


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


def median_stderr(samples: np.ndarray) -> float:
    """Standard error of a sample median, from the IQR (robust to the outliers a shared host makes)."""
    q1, q3 = np.percentile(samples, [25, 75])
    return 1.2533 * (q3 - q1) / 1.349 / np.sqrt(len(samples))


def relative_precision(samples: list[list[float]]) -> float:
    """Worst relative standard error of what the rounds estimate.

    With one runner, its median; with several, each runner's median round-by-round difference
    from the first (the quantity ``paired_delta_ms`` reports), relative to the first's median.
    """
    first = np.asarray(samples[0])
    ref = float(np.median(first))
    if len(samples) == 1:
        return median_stderr(first) / ref
    return max(median_stderr(first - np.asarray(s)) / ref for s in samples[1:])


def pairs_precision(samples: list[list[float]]) -> float:
    """Standard error of a mean over runner pairs (baseline, candidate, baseline, candidate, ...) from their rounds."""
    errors = [
        median_stderr(np.asarray(b) - np.asarray(c)) / float(np.median(b))
        for b, c in zip(samples[0::2], samples[1::2], strict=True)
    ]
    return float(np.sqrt(np.mean(np.square(errors)) / len(errors)))


def time_interleaved(
    timers: list[Callable[[], float]],
    repeats: int,
    precision: float | None = None,
    max_repeats: int | None = None,
    precision_of: Callable[[list[list[float]]], float] = relative_precision,
) -> list[list[float]]:
    """Time several runners in turn, round after round, so drift hits them all alike.

    Rounds alternate the order (A B, B A, ...): on this project's VMs the runner that goes first in
    a round measured ~1 % slower than an identical second one, a bias alternation cancels.
    After ``repeats`` rounds, more are added while the relative standard error
    (``precision_of``, default ``relative_precision``) exceeds ``precision``, up to ``max_repeats`` rounds
    (default 5x).
    """
    for timed in timers:
        warm_up(timed)
    samples: list[list[float]] = [[] for _ in timers]
    limit = repeats if precision is None else max(repeats, max_repeats or 5 * repeats)
    order = list(range(len(timers)))
    for r in range(limit):
        # precise enough after the first ``repeats`` rounds, or after each further ten
        if r >= repeats and (r - repeats) % 10 == 0 and precision_of(samples) <= precision:
            break
        for i in order if r % 2 == 0 else order[::-1]:
            samples[i].append(timers[i]())
    return samples


HOST_BUSY_CORES = 0.5  # other processes' average load above which a timing is not trusted to decide


class OtherLoad:
    """CPU used by *other* processes during a ``with`` block, in cores (host-wide busy time minus ours).

    Interleaving cancels drift that hits every model alike, but contention does not: on this project's
    2-core VMs, one training process on the other core moved a pruned/dense ratio by up to 10 % while each
    measurement's own interval stayed at 2-5 %. Linux only (``/proc/stat``); ``cores`` is None elsewhere.
    Hypervisor steal counts as other load.
    """

    cores: float | None = None

    @staticmethod
    def _host_busy_s() -> float | None:
        try:
            with open("/proc/stat") as fh:
                fields = [float(v) for v in fh.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> OtherLoad:
        self._start = (self._host_busy_s(), time.process_time(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        host, own, wall = self._host_busy_s(), time.process_time(), time.perf_counter()
        if host is None or self._start[0] is None or wall <= self._start[2]:
            return
        other = (host - self._start[0]) - (own - self._start[1])
        self.cores = max(0.0, other / (wall - self._start[2]))


def host_timer(run: Callable[[], object]) -> Callable[[], float]:
    """Seconds of one call of ``run`` on the host clock (valid when ``run`` waits for its device)."""

    def timed() -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    return timed


def host_device() -> str:
    return f"cpu:{platform.processor() or platform.machine()}"
