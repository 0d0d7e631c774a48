"""Latency backends and the timing protocol."""

from hwprune.latency.backends import BACKENDS, measure
from hwprune.latency.measurement import Measurement

__all__ = ["BACKENDS", "Measurement", "measure"]
