"""Writing files so that nothing is ever half written, and refusing an unwritable path before any work."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def staged(path: str | Path) -> Iterator[Path]:
    """A path named as ``path`` in a hidden folder beside it, moved into place only when the block ends normally.

    Every file written in the folder moves (side files first, e.g. an ONNX model's external weights, whose name
    the model records); when the block raises, nothing does.
    """
    path = Path(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        yield folder / path.name
        for f in sorted(folder.iterdir(), key=lambda f: f.name == path.name):
            os.replace(f, path.parent / f.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
