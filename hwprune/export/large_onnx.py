"""ONNX models over protobuf's 2 GB limit: weights in a side file, checks and shape inference from files.

One serialised protobuf message cannot exceed 2 GB, so a model that large (vit_h_14, regnet_y_128gf) cannot
be exported as one file, checked or shape-inferred in memory, or handed to onnxruntime as bytes. Every
in-memory use of a possibly large model goes through these functions: below :data:`PROTO_LIMIT` they do
what onnx does in memory; above it they write the model with its weights in ``<file>.data`` beside it
(onnx's external-data format, which onnx.checker, shape inference and onnxruntime read from the path).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx

PROTO_LIMIT = 2**31 - 1  # bytes of one serialised protobuf message
EXPORT_LIMIT = 1_800_000_000  # parameter bytes above which an export writes external data (graph + headroom)


def too_large(model: onnx.ModelProto) -> bool:
    """True when ``model`` cannot be serialised as one message (protobuf raises rather than say its size)."""
    try:
        return model.ByteSize() > PROTO_LIMIT
    except Exception:  # EncodeError: the size itself is over the limit
        return True


def data_file(path: str | Path) -> Path:
    """Where the weights of a large model saved at ``path`` go."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def save_onnx(model: onnx.ModelProto, path: str | Path, location: str | None = None) -> None:
    """Write ``model`` to ``path``; when too large, its weights go to ``location`` (default ``<name>.data``) beside it.

    ``model`` itself is left as it was (onnx's external-data save moves the weights out of the message it is given).
    """
    path = Path(path)
    if not too_large(model):
        onnx.save(model, str(path))
        return
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    data = path.parent / (location or data_file(path).name)
    data.unlink(missing_ok=True)  # external data is appended to an existing file
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
              size_threshold=1024)  # fmt: skip


def infer_shapes(model: onnx.ModelProto, **options) -> onnx.ModelProto:
    """``onnx.shape_inference.infer_shapes``, through a file when the model is too large for memory's way."""
    if not too_large(model):
        return onnx.shape_inference.infer_shapes(model, **options)
    with tempfile.TemporaryDirectory(prefix="hwprune-onnx-") as tmp:
        src, dst = Path(tmp) / "model.onnx", Path(tmp) / "inferred.onnx"
        save_onnx(model, src)
        onnx.shape_inference.infer_shapes_path(str(src), str(dst), **options)
        return onnx.load(str(dst))  # the weights are read back from model.onnx.data, inside tmp


def check_model(model: onnx.ModelProto) -> None:
    """``onnx.checker.check_model``, through a file when the model is too large."""
    if not too_large(model):
        onnx.checker.check_model(model)
        return
    with tempfile.TemporaryDirectory(prefix="hwprune-onnx-") as tmp:
        save_onnx(model, Path(tmp) / "model.onnx")
        onnx.checker.check_model(str(Path(tmp) / "model.onnx"))


@contextlib.contextmanager
def session_source(model) -> Iterator[str | bytes]:
    """What ``onnxruntime.InferenceSession`` takes for ``model`` (a path, or a ModelProto), valid inside the block.

    A large ModelProto is written to a temporary folder for the session to load (it keeps its own copy of the
    weights, so the folder may go once the session exists).
    """
    if not isinstance(model, onnx.ModelProto):
        yield str(model)
    elif not too_large(model):
        yield model.SerializeToString()
    else:
        with tempfile.TemporaryDirectory(prefix="hwprune-onnx-") as tmp:
            save_onnx(model, Path(tmp) / "model.onnx")
            yield str(Path(tmp) / "model.onnx")
