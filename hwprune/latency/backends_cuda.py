"""CUDA latency backends (``cuda``, and ``ort-cuda`` where onnxruntime has the CUDA provider), plus availability.

``cuda`` runs a copy of the model with torch on the current CUDA device, ``cudnn.benchmark`` on (its
autotuning happens in the warm-up runs, outside timing). Its ``run()`` returns only after
``torch.cuda.synchronize``, so host timing around it is valid; its ``timed_run()`` instead brackets the
forward pass with CUDA events and returns their elapsed time in seconds, the device-side latency
(``measure`` uses it instead of the host clock).

An unavailable backend fails when it is prepared, in one line naming the reason and the backends that
are available here (``backends.available_backends``).
"""

from __future__ import annotations

import copy
import importlib.util
import tempfile
from pathlib import Path

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.latency.backends import LatencyBackend, Runner, register_backend, require_available


def cuda_unavailable() -> str | None:
    """Why torch cannot run on CUDA here, or None when it can."""
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is built without CUDA"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no CUDA device or driver visible)"
    return None


def _ort_providers() -> list[str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return []
    import onnxruntime as ort

    return list(ort.get_available_providers())


def ort_cuda_unavailable() -> str | None:
    """Why onnxruntime cannot run on CUDA here, or None when it can."""
    if "CUDAExecutionProvider" not in _ort_providers():
        return "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    return cuda_unavailable()


def _cuda_versions() -> dict:
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cudnn_benchmark": True,
    }


@register_backend
class Cuda(LatencyBackend):
    """PyTorch on the current CUDA device, timed by CUDA events."""

    name = "cuda"
    round_to = 8

    def unavailable(self) -> str | None:
        return cuda_unavailable()

    def prepare(self, model: nn.Module, example: torch.Tensor, threads: int = 1, warmup: int = 3, **_) -> Runner:
        """Prepare a copy of ``model`` on the current CUDA device; the caller's model is not moved.

        Options meant for other backends are ignored.
        """
        require_available(self.name)
        if not isinstance(model, nn.Module):
            raise HwpruneError(f"the cuda backend times nn.Module models, not {type(model).__name__} (ONNX: ort-cuda)")
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = True
        device = torch.device("cuda", torch.cuda.current_device())
        net = copy.deepcopy(model).eval().to(device)
        x = example.detach().to(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run():
            with torch.inference_mode():
                net(x)
            torch.cuda.synchronize(device)

        def timed_run() -> float:
            torch.cuda.synchronize(device)
            start.record()
            with torch.inference_mode():
                net(x)
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3  # ms -> s

        for _ in range(warmup):  # cudnn autotuning and lazy CUDA initialisation
            run()
        name = f"cuda:{device.index} {torch.cuda.get_device_name(device)}"
        return Runner(run, name, "torch-eager", threads, _cuda_versions(), timed_run)


class OrtCuda(LatencyBackend):
    """ONNX Runtime with the CUDA provider, IO bound to the GPU."""

    name = "ort-cuda"
    round_to = 8
    times_onnx = True

    def unavailable(self) -> str | None:
        return ort_cuda_unavailable()

    def prepare(self, model, example: torch.Tensor, threads: int = 1, exporter: str = "dynamo", **_) -> Runner:
        """ONNX Runtime with the CUDA provider; inputs and outputs stay on the GPU (IO binding)."""
        require_available(self.name)
        if isinstance(model, nn.Module):
            from hwprune.export.onnx_export import export_onnx

            with tempfile.TemporaryDirectory(prefix="hwprune-") as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(model, example, path, exporter)
                return self.prepare(path, example, threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        device_id = torch.cuda.current_device()
        from hwprune.export.large_onnx import session_source

        with session_source(model) as source:
            session = ort.InferenceSession(
                source, sess_options=opts, providers=[("CUDAExecutionProvider", {"device_id": device_id})]
            )
        if session.get_providers()[0] != "CUDAExecutionProvider":  # ort falls back to CPU when CUDA libs are missing
            raise HwpruneError(
                f"latency backend 'ort-cuda' is unavailable: onnxruntime fell back to {session.get_providers()[0]} "
                "(CUDA/cuDNN libraries not found)"
            )
        binding = session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(example.detach().cpu().numpy(), "cuda", device_id)
        binding.bind_ortvalue_input(session.get_inputs()[0].name, value)
        for out in session.get_outputs():
            binding.bind_output(out.name, "cuda", device_id)

        def run():
            session.run_with_iobinding(binding)  # synchronises the CUDA provider's stream before returning

        name = f"cuda:{device_id} {torch.cuda.get_device_name(device_id)}"
        return Runner(run, name, "CUDAExecutionProvider", threads, {"onnxruntime": ort.__version__})


if "CUDAExecutionProvider" in _ort_providers():  # listed only where onnxruntime has the provider
    register_backend(OrtCuda)
