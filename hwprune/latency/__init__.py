"""Latency backends (torch-cpu, ort-cpu, xla, cuda, ort-cuda) and the timing protocol."""

from hwprune.latency import backends_cuda, backends_xla  # noqa: F401  (register xla, cuda, ort-cuda)
from hwprune.latency.backends import (
    BACKENDS,
    DEFAULT_BACKEND,
    LatencyBackend,
    available_backends,
    measure,
    measure_ratio,
    register_backend,
    require_available,
)
from hwprune.latency.measurement import LatencyRatio, Measurement

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "LatencyBackend",
    "LatencyRatio",
    "Measurement",
    "available_backends",
    "measure",
    "measure_ratio",
    "register_backend",
    "require_available",
]
