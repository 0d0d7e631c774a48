"""Which channel-count step a backend runs fastest: found by timing, not assumed.

Kernels block channels (onnxruntime's NCHWc layout in 8s or 16s, oneDNN's in 8s or 16s, XLA's tiles),
so a count off the block costs about as much as the next block up. A probe convolution is timed at
every count of a window; a step is good when the counts it allows run at (nearly) the time per
multiply-add of the coarsest step's counts. The smallest good step is the backend's alignment: the
``--round-to`` that loses no speed while leaving the solver the finest choice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

STEPS = (1, 2, 4, 8, 16, 32)
WINDOW = range(64, 129)  # counts probed: two blocks of 32, where small layers of common networks live


def step_slowdowns(time_ms: dict[int, float]) -> dict[int, float]:
    """Per step: mean time per MAC of the counts it allows, relative to the coarsest step's (1.0 = as fast).

    ``time_ms``: a c -> c convolution's time at each count c (MACs grow as c squared). A mean, not a
    median: a step whose counts are half fast, half slow is slow on average.
    """
    per_mac = {c: t / (c * c) for c, t in time_ms.items()}
    coarsest = [v for c, v in per_mac.items() if c % STEPS[-1] == 0]
    if not coarsest:
        raise ValueError(f"the probed counts include no multiple of {STEPS[-1]}")
    reference = float(np.mean(coarsest))
    return {step: float(np.mean([v for c, v in per_mac.items() if c % step == 0])) / reference for step in STEPS}


def alignment_step(time_ms: dict[int, float], tolerance: float = 0.05) -> int:
    """The smallest step whose counts run within ``1 + tolerance`` of the coarsest step's time per MAC."""
    return next(
        step for step, slowdown in step_slowdowns(time_ms).items() if slowdown <= 1 + tolerance or step == STEPS[-1]
    )


def probe_times(time_conv: Callable[[nn.Module, torch.Tensor], float], counts=WINDOW, size: int = 28,
                progress: bool = True) -> dict[int, float]:  # fmt: skip
    """A 3x3 convolution with ``c`` input and output channels on a ``size`` x ``size`` map, timed at each count."""
    torch.manual_seed(0)
    out = {}
    for c in tqdm(counts, desc="probing channel alignment", unit="count", disable=not progress):
        out[c] = time_conv(nn.Conv2d(c, c, 3, padding=1, bias=False).eval(), torch.randn(1, c, size, size))
    return out


def backend_timer(backend: str, threads: int = 1, repeats: int = 20) -> Callable[[nn.Module, torch.Tensor], float]:
    """Time one module on ``backend`` (median ms).

    ONNX backends get it through the TorchScript exporter, which writes a single convolution as the
    same one Conv node as dynamo does, in a tenth of the time.
    """
    from hwprune.latency.backends import measure

    def time_conv(module, x):
        [m] = measure(backend, [module], x, threads=threads, repeats=repeats, precision=None, exporter="torchscript")
        return m.median_ms

    return time_conv
