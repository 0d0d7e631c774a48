"""The ``xla`` latency backend: torch_xla on the PJRT device named by ``PJRT_DEVICE``.

XLA traces lazily and compiles each new graph, so compilation must stay out of the timed region: the
runner is warmed up until the XLA metrics (``CompileTime``) report no new compilation for
``stable_runs`` runs in a row. A timed run is the forward pass, ``torch_xla.sync()`` (which cuts and
executes the graph) and ``xm.wait_device_ops()`` (which waits until the device is done), so host timing
around it is wall time of one inference. ``torch_xla`` is imported only when the backend is prepared.
"""

from __future__ import annotations

import copy
import importlib.util
import os
from dataclasses import dataclass

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.latency.backends import LatencyBackend, Runner, register_backend, require_available
from hwprune.latency.measurement import host_device


def xla_unavailable() -> str | None:
    """Why the ``xla`` backend cannot run here, or None when it can (does not import torch_xla)."""
    if importlib.util.find_spec("torch_xla") is None:
        return "torch_xla is not installed"
    if not os.environ.get("PJRT_DEVICE"):
        return "PJRT_DEVICE is not set (export PJRT_DEVICE=CPU, CUDA or TPU)"
    return None


def compile_count() -> int:
    """Graphs XLA has compiled in this process so far (the ``CompileTime`` metric's sample count)."""
    import torch_xla.debug.metrics as met

    data = met.metric_data("CompileTime")
    return int(data[0]) if data else 0


@dataclass
class XlaRunner(Runner):
    """A runner whose ``compiles()`` reads the process's XLA compile count (it must not move while timed)."""

    compiles: object = compile_count


@register_backend
class Xla(LatencyBackend):
    """torch_xla on the PJRT device named by PJRT_DEVICE (CPU here, TPU or GPU in the field)."""

    name = "xla"
    round_to = 8

    def unavailable(self) -> str | None:
        return xla_unavailable()

    def prepare(
        self, model: nn.Module, example: torch.Tensor, threads: int = 1, stable_runs: int = 3, max_warmup: int = 50, **_
    ) -> XlaRunner:
        """Prepare a copy of ``model`` on the XLA device and warm it up until nothing new compiles.

        ``threads`` sets the host's torch threads; XLA's own CPU thread pool is runtime-managed (recorded in
        ``versions``). The caller's model is not moved. Options meant for other backends are ignored.
        """
        require_available(self.name)
        if not isinstance(model, nn.Module):
            raise HwpruneError(f"the xla backend times nn.Module models, not {type(model).__name__} (ONNX: use ort-*)")
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.runtime as xr

        torch.set_num_threads(threads)
        device = torch_xla.device()
        net = copy.deepcopy(model).eval().to(device)
        x = example.detach().to(device)

        def run():
            with torch.no_grad():
                out = net(x)  # held until the sync: a dropped output would be pruned from the graph
            torch_xla.sync()
            xm.wait_device_ops()
            return out

        stable, last = 0, compile_count()
        for _ in range(max_warmup):
            run()
            now = compile_count()
            stable = stable + 1 if now == last else 0
            last = now
            if stable >= stable_runs:
                break
        else:
            raise HwpruneError(
                f"xla: the model still compiles new graphs after {max_warmup} warm-up runs (dynamic shapes or "
                "python-side state in forward?); it cannot be timed without compilation"
            )
        pjrt = os.environ.get("PJRT_DEVICE", "")
        [real] = xm.xla_real_devices([device]) if hasattr(xm, "xla_real_devices") else [str(device)]
        where = f"xla:{real}" + (f" ({host_device()})" if xr.device_type() == "CPU" else "")
        versions = {
            "torch": torch.__version__,
            "torch_xla": torch_xla.__version__,
            "PJRT_DEVICE": pjrt,
            "xla_threads": "runtime-managed" if xr.device_type() == "CPU" else "n/a",
        }
        return XlaRunner(run, where, f"torch_xla/PJRT:{xr.device_type()}", threads, versions)
