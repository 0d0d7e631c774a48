"""Writing files so that nothing is ever half written, and refusing an unwritable path before any work."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from hwprune.errors import HwpruneError


def write_atomically(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the folder itself may be missing: nothing to remove then
            tmp.unlink()
        raise HwpruneError(f"cannot write {path}: {exc.strerror or exc}; choose a writable path") from None


def temp_path_beside(path: str | Path) -> Path:
    """A temporary name next to ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")


def check_writable(path: str | Path) -> Path:
    """Fail before any work when ``path`` cannot be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise HwpruneError(f"output path {path} is a directory: give a file name such as {path / 'model.onnx'}")
    if not parent.is_dir():
        raise HwpruneError(f"output directory {parent} does not exist: create it or choose another path")
    if not os.access(parent, os.W_OK):
        raise HwpruneError(f"output directory {parent} is not writable: choose another path")
    return path
