"""Latency backends: each prepares a runner for a model and reports how it ran.

A backend has one job: turn (model, example input) into a zero-argument callable that runs one
inference, plus the metadata a Measurement records. Timing itself is shared (measurement.py).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune.latency.measurement import Measurement, host_device, robust_stats, time_interleaved
from hwprune.registry import Registry


@dataclass
class Runner:
    run: object  # zero-argument callable
    device: str
    provider: str
    threads: int
    versions: dict


BACKENDS: Registry = Registry("latency backend")


@BACKENDS.register("torch-cpu")
def torch_cpu(model: nn.Module, example: torch.Tensor, threads: int = 1) -> Runner:
    torch.set_num_threads(threads)
    model = model.eval()

    def run():
        with torch.inference_mode():
            model(example)

    return Runner(run, host_device(), "torch-eager", threads, {"torch": torch.__version__})


@BACKENDS.register("ort-cpu")
def ort_cpu(model: nn.Module | str | Path, example: torch.Tensor, threads: int = 1) -> Runner:
    """Onnxruntime CPU: explicit intra/inter threads, all graph optimisations, no spinning."""
    import onnxruntime as ort

    from hwprune.export.onnx_export import export_onnx, ort_session

    if isinstance(model, nn.Module):
        tmp = Path(tempfile.mkdtemp(prefix="hwprune-")) / "model.onnx"
        export_onnx(model, example, tmp)
        model = tmp
    session = ort_session(model, intra_threads=threads, inter_threads=1)
    feed = {session.get_inputs()[0].name: example.detach().cpu().numpy()}

    def run():
        session.run(None, feed)

    return Runner(run, host_device(), "CPUExecutionProvider", threads, {"onnxruntime": ort.__version__})


def measure(
    backend: str, models: list, example: torch.Tensor, threads: int = 1, repeats: int = 30
) -> list[Measurement]:
    """Time ``models`` (modules or ONNX paths) interleaved on one backend."""
    make = BACKENDS.get(backend)
    runners = [make(m, example, threads=threads) for m in models]
    samples = time_interleaved([r.run for r in runners], repeats)
    out = []
    for r, s in zip(runners, samples, strict=False):
        median, iqr, rejected = robust_stats(s)
        out.append(
            Measurement(
                backend,
                median,
                iqr,
                len(s),
                rejected,
                r.threads,
                int(example.shape[0]),
                tuple(example.shape),
                r.device,
                r.provider,
                r.versions,
            )
        )
    return out
