"""Latency backends: each prepares a runner for a model and reports how it ran.

A backend has one job: turn (model, example input) into a zero-argument callable that runs one
inference, plus the metadata a Measurement records. Timing itself is shared (measurement.py).
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.latency.measurement import (
    SESSIONS,
    LatencyRatio,
    Measurement,
    OtherLoad,
    host_device,
    host_timer,
    pairs_precision,
    robust_stats,
    time_interleaved,
)
from hwprune.latency.op_timing import OpTimes, ort_op_times, torch_op_times
from hwprune.registry import Registry


@dataclass
class Runner:
    run: Callable[[], object]  # one inference; returns only when the device is done
    device: str
    provider: str
    threads: int
    versions: dict
    timed_run: Callable[[], float] | None = None  # one inference timed by the device's own clock (seconds)

    def timer(self) -> Callable[[], float]:
        return self.timed_run or host_timer(self.run)


class LatencyBackend:
    """Where a model is timed: how it prepares a runner, whether it can run here, how channels should align.

    To add a backend, subclass this in one module, set ``name`` (and ``round_to`` / ``times_onnx``), implement
    :meth:`prepare` (and :meth:`unavailable` when it needs hardware or a package), and decorate the class with
    :func:`register_backend`; import the module in ``hwprune/latency/__init__.py``. Nothing else names it.
    """

    name: str = ""
    round_to: int = 16  # channel-count alignment for latency budgets (benchmarks/results/alignment.md)
    times_onnx: bool = False  # times ONNX files (candidates, the shipped file), not PyTorch modules
    reports_op_times: bool = False  # implements op_times (per-op timings for the latency model)
    times_ops_alone: bool = False  # its ops can be timed alone as PyTorch modules (kernel tables)

    def unavailable(self) -> str | None:
        """Why this backend cannot run on this machine (None: it can)."""
        return None

    def prepare(self, model, example: torch.Tensor, threads: int = 1, **opts) -> Runner:
        """A runner for one inference of ``model`` on ``example``; options meant for other backends are ignored."""
        raise NotImplementedError

    def op_times(self, model, example: torch.Tensor, threads: int = 1, runs: int = 5, **opts) -> OpTimes:
        """Each conv/linear op's median time in ``runs`` runs of ``model``, by weight (``reports_op_times``)."""
        raise HwpruneError(f"latency backend {self.name!r} cannot report per-op timings")


BACKENDS: Registry[LatencyBackend] = Registry("latency backend")
DEFAULT_BACKEND = "ort-cpu"  # what prune, profile and measure use unless told


def register_backend(cls: type[LatencyBackend]) -> type[LatencyBackend]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    BACKENDS.add(cls.name, cls())
    return cls


def available_backends() -> list[str]:
    """Registered latency backends that can run on this machine, sorted."""
    return [n for n in BACKENDS.names() if BACKENDS.get(n).unavailable() is None]


def onnx_backends() -> str:
    """The registered backends that time ONNX files, for messages (``ort-cpu, ort-cuda``)."""
    return ", ".join(n for n in BACKENDS.names() if BACKENDS.get(n).times_onnx)


def require_available(name: str) -> LatencyBackend:
    """The backend called ``name``; a one-line HwpruneError when it is unknown or cannot run here."""
    backend = BACKENDS.get(name)  # unknown names: one line listing the registered ones
    why = backend.unavailable()
    if why is not None:
        raise HwpruneError(
            f"latency backend {name!r} is unavailable: {why}; available here: {', '.join(available_backends())}"
        )
    return backend


@register_backend
class TorchCpu(LatencyBackend):
    """PyTorch eager on the host CPU, ``threads`` intra-op threads."""

    name = "torch-cpu"
    reports_op_times = True
    times_ops_alone = True

    def op_times(self, model: nn.Module, example: torch.Tensor, threads: int = 1, runs: int = 5, **_) -> OpTimes:
        torch.set_num_threads(threads)
        return torch_op_times(model.eval(), example, runs)

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int = 1, **_) -> Runner:
        torch.set_num_threads(threads)
        model = model.eval()

        def run():
            with torch.inference_mode():
                model(example)

        return Runner(run, host_device(), "torch-eager", threads, {"torch": torch.__version__})


@register_backend
class OrtCpu(LatencyBackend):
    """ONNX Runtime on CPU: explicit intra/inter threads, all graph optimisations, no spinning.

    A module is exported first (the session keeps the graph in memory, so the file is removed).
    """

    name = "ort-cpu"
    times_onnx = True
    reports_op_times = True

    def op_times(self, model, example: torch.Tensor, threads: int = 1, runs: int = 5, exporter: str = "dynamo", **_):
        if not isinstance(model, nn.Module):
            return ort_op_times(model, example, threads, runs)
        from hwprune.export.onnx_export import export_onnx

        with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, example, path, exporter)
            return ort_op_times(path, example, threads, runs)

    def unavailable(self) -> str | None:
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"

    def prepare(self, model, example: torch.Tensor, threads: int = 1, exporter: str = "dynamo", **_) -> Runner:
        import onnxruntime as ort

        from hwprune.export.onnx_export import export_onnx, ort_session

        if isinstance(model, nn.Module):
            with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(model, example, path, exporter)
                session = ort_session(path, intra_threads=threads, inter_threads=1)
        else:
            session = ort_session(model, intra_threads=threads, inter_threads=1)
        feed = {session.get_inputs()[0].name: example.detach().cpu().numpy()}

        def run():
            session.run(None, feed)

        return Runner(run, host_device(), "CPUExecutionProvider", threads, {"onnxruntime": ort.__version__})


def measure(
    backend: str,
    models: list,
    example: torch.Tensor,
    threads: int = 1,
    repeats: int = 30,
    precision: float | None = 0.005,
    max_repeats: int | None = None,
    **opts,
) -> list[Measurement]:
    """Time ``models`` (modules or ONNX paths) interleaved on one backend; ``opts`` go to the backend.

    At least ``repeats`` rounds; more (up to ``max_repeats``, default 5x) until the standard error of
    each model's difference from the first is within ``precision`` of the first's median (None: fixed).
    """
    runners = [require_available(backend).prepare(m, example, threads=threads, **opts) for m in models]
    with OtherLoad() as load:
        samples = time_interleaved([r.timer() for r in runners], repeats, precision, max_repeats)
    return [_measurement(backend, r, s, example, load.cores) for r, s in zip(runners, samples, strict=True)]


def measure_ratio(
    backend: str,
    baseline,
    candidate,
    example: torch.Tensor,
    sessions: int = SESSIONS,
    threads: int = 1,
    repeats: int = 30,
    precision: float | None = 0.005,
    max_repeats: int | None = None,
    **opts,
) -> LatencyRatio:
    """``candidate`` / ``baseline`` latency over ``sessions`` fresh runner pairs, all interleaved in one run.

    Each pair gets at least ``repeats`` rounds; more (up to ``max_repeats``) until the pairs' own standard
    error is within ``precision`` (the spread between pairs, which rounds cannot shrink, widens ``ci95``).
    """
    engine = require_available(backend)
    runners = [
        engine.prepare(m, example, threads=threads, **opts) for _ in range(sessions) for m in (baseline, candidate)
    ]
    with OtherLoad() as load:
        samples = time_interleaved([r.timer() for r in runners], repeats, precision, max_repeats, pairs_precision)
    timed = [_measurement(backend, r, s, example, load.cores) for r, s in zip(runners, samples, strict=True)]
    return LatencyRatio(tuple(timed[0::2]), tuple(timed[1::2]))


def _measurement(backend: str, runner: Runner, samples: list[float], example: torch.Tensor, load) -> Measurement:
    median, iqr, rejected = robust_stats(samples)
    return Measurement(
        backend,
        median,
        iqr,
        len(samples),
        rejected,
        runner.threads,
        int(example.shape[0]),
        tuple(example.shape),
        runner.device,
        runner.provider,
        runner.versions,
        tuple(float(v) * 1e3 for v in samples),
        load,
    )
