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


TOKEN_AXES = {0: "batch", 1: "tokens"}  # the axes of token ids [batch, tokens] that an export may leave dynamic


def token_ids(example) -> bool:
    """Whether ``example`` is token ids ``[batch, tokens]`` (a 2-D integer tensor), exported with dynamic axes."""
    return (
        isinstance(example, torch.Tensor)
        and example.dim() == 2
        and not example.dtype.is_floating_point
        and not example.dtype.is_complex
        and example.dtype != torch.bool
    )


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    exporter: str = DEFAULT_EXPORTER,
    *,
    dynamic: bool = True,
    notes: list[str] | None = None,
) -> str:
    """Write ``model`` traced at ``example`` to ``path``; returns the exporter that succeeded.

    The dynamo exporter is torch's default; if it fails on a model the TorchScript exporter is
    tried, and the one used is reported so a result can always be traced back. A model whose weights come near
    protobuf's 2 GB limit is written with its weights in ``<path>.data`` (:mod:`hwprune.export.large_onnx`).

    Token ids (:func:`token_ids`) are exported with their batch and token axes dynamic (``dynamic``), so that
    one file serves every sequence length: ``dynamic_shapes`` for dynamo (which fixes an axis the model's code
    specialises, such as batch 1), ``dynamic_axes`` for TorchScript; first both axes, then the token axis
    alone, then a static export, with the same exporter before the other is tried. A dynamic axis that could
    not be captured never fails an export: why is appended to ``notes``. What the file declares is read from it
    (:func:`input_shape`), not assumed. Any other input (images) is exported static, at ``example``'s shape.
    """
    if exporter not in EXPORTERS:
        raise HwpruneError(f"unknown ONNX exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    # the dynamo exporter logs a warning per torchvision op it registers; they are not about this model
    logging.getLogger("torch.onnx._internal.exporter._schemas").setLevel(logging.ERROR)
    order = [exporter] + [e for e in EXPORTERS if e != exporter]
    axes_tried = [TOKEN_AXES, {1: TOKEN_AXES[1]}, {}] if dynamic and token_ids(example) else [{}]
    weight_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    large = weight_bytes > large_onnx.EXPORT_LIMIT
    errors = []
    model.eval()
    for name in order:
        dynamic_errors = []
        for axes in axes_tried:
            try:
                with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                    warnings.simplefilter("ignore")
                    _export(model, example, path, name, axes, large)
            except Exception as exc:  # the exporters raise many types; keep the first line of each
                if axes:
                    dynamic_errors.append(first_line(exc))
                else:
                    errors.append(f"{name}: {first_line(exc)}")
                continue
            if dynamic_errors and not axes and notes is not None:
                notes.append(
                    f"the {name} exporter could not make the token axis dynamic ({dynamic_errors[-1]}): the ONNX "
                    f"file runs at {example.shape[1]} tokens only"
                )
            return name
    raise HwpruneError(f"ONNX export failed ({'; '.join(errors)})")


def _export(model: nn.Module, example: torch.Tensor, path, exporter: str, axes: dict[int, str], large: bool) -> None:
    """One export attempt with ``exporter``, ``axes`` of the input dynamic (by name)."""
    if exporter == "dynamo":
        from torch.export import Dim

        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            external_data=large,  # one file, or the weights in <path>.data beside it
            input_names=["input"],
            output_names=["output"],
            # positional (a tuple): the forward's own argument name (input_ids) is not "input"
            dynamic_shapes=({axis: Dim(name) for axis, name in axes.items()},) if axes else None,
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
            dynamic_axes={"input": axes} if axes else None,
            opset_version=17,
        )


def input_shape(path_or_session) -> list[int | str | None]:
    """The shape the ONNX file's (first) input declares: a number per static axis, a name (or None) per dynamic one."""
    session = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    return list(session.get_inputs()[0].shape)


def check_onnx(path: str | Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise HwpruneError(f"onnx.checker rejects {path}: {str(exc).splitlines()[0]}") from exc


def ort_session(path, intra_threads: int = 1, inter_threads: int = 1, profile_prefix: str | None = None):
    """An onnxruntime CPU session with explicit thread counts (never the machine-wide default).

    ``path`` is an ONNX file or an in-memory ``onnx.ModelProto`` (a candidate compacted from an ONNX file).
    ``profile_prefix``: profile every run (per-node times) into a JSON file starting with it.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = inter_threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    with session_source(path) as source:
        return ort.InferenceSession(source, sess_options=opts, providers=["CPUExecutionProvider"])


def run_onnx(path_or_session, example: torch.Tensor) -> list[np.ndarray]:
    session = path_or_session if hasattr(path_or_session, "run") else ort_session(path_or_session)
    name = session.get_inputs()[0].name
    return session.run(None, {name: example.detach().cpu().numpy()})
