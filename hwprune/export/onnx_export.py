"""ONNX export as one self-contained file, checked by onnx.checker and run in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwprune.errors import HwpruneError, first_line
from hwprune.export import large_onnx
from hwprune.export.large_onnx import session_source

EXPORTERS = ("dynamo", "torchscript")
# the one exporter of the shipped file, hence of every latency measurement that decides about it (profile,
# closed loop, validation): two exporters write different graphs, and a budget met on one is not met on the other
DEFAULT_EXPORTER = EXPORTERS[0]


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path, exporter: str = DEFAULT_EXPORTER) -> str:
    """Write ``model`` traced at ``example`` to ``path``; returns the exporter that succeeded.

    The dynamo exporter is torch's default; if it fails on a model the TorchScript exporter is
    tried, and the one used is reported so a result can always be traced back. A model whose weights come near
    protobuf's 2 GB limit is written with its weights in ``<path>.data`` (:mod:`hwprune.export.large_onnx`).
    """
    if exporter not in EXPORTERS:
        raise HwpruneError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    # the dynamo exporter logs a warning per torchvision op it registers; they are not about this model
    logging.getLogger("torch.onnx._internal.exporter._schemas").setLevel(logging.ERROR)
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    large = weight_bytes > large_onnx.EXPORT_LIMIT
    errors = []
    model.eval()
    for name in order:
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                if name == "dynamo":
                    torch.onnx.export(
                        model,
                        (example,),
                        str(path),
                        dynamo=True,
                        external_data=large,  # one file, or the weights in <path>.data beside it
                        input_names=["input"],
                        output_names=["output"],
                        verbose=False,
                    )
                else:
                    torch.onnx.export(
                        model,
                        (example,),
                        str(path),
                        dynamo=False,
                        input_names=["input"],
                        output_names=["output"],
                        opset_version=17,
                    )
            return name
        except Exception as exc:  # the exporters raise many types; keep the first line of each
            errors.append(f"{name}: {first_line(exc)}")
    raise HwpruneError(f"ONNX export failed ({'; '.join(errors)})")


def check_onnx(path: str | Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise HwpruneError(f"onnx.checker rejects {path}: {str(exc).splitlines()[0]}") from exc


def ort_session(path, intra_threads: int = 1, inter_threads: int = 1):
    """An onnxruntime CPU session with explicit thread counts (never the machine-wide default).

    ``path`` is an ONNX file or an in-memory ``onnx.ModelProto`` (a candidate compacted from an ONNX file).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = inter_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    with session_source(path) as source:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, example: torch.Tensor) -> list[np.ndarray]:
    session = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    name = session.get_inputs()[0].name
    return session.run(None, {name: example.detach().cpu().numpy()})
