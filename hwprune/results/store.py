"""An append-only CSV of :class:`~hwprune.results.schema.RunRecord` rows, safe across processes.

Each :meth:`ResultsStore.append` takes an exclusive ``fcntl.flock`` on a sidecar ``<path>.lock``,
writes the header if the file is new or empty, writes the whole row with a single ``os.write`` on an
``O_APPEND`` descriptor and fsyncs, so concurrent writers never tear or interleave rows.

This module must not import torch; pandas is imported only by :meth:`ResultsStore.load`.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from hwprune.errors import HwpruneError
from hwprune.results.schema import _FIELD_TYPES, COLUMNS, RunRecord

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ResultsStore"]

_ENCODING = "utf-8"


def _encode_line(cells: Sequence[str]) -> str:
    # Python < 3.12 does not quote a bare "\r" when the line terminator is "\n", and a reader would
    # split the row there; such rows are written fully quoted instead.
    quoting = csv.QUOTE_ALL if any("\r" in c for c in cells) else csv.QUOTE_MINIMAL
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n", quoting=quoting).writerow(cells)
    return buf.getvalue()


def _header_mismatch(path: str, header: list[str]) -> HwpruneError:
    missing = [c for c in COLUMNS if c not in header]
    extra = [c for c in header if c not in COLUMNS]
    detail = []
    if missing:
        detail.append(f"missing {', '.join(missing)}")
    if extra:
        detail.append(f"unknown {', '.join(extra)}")
    if not detail:
        detail.append("same columns in another order")
    return HwpruneError(
        f"results file {path} was written by another schema version ({'; '.join(detail)}); "
        "append to a new file, or load it with pandas, convert it to the current columns and rewrite it"
    )


class ResultsStore:
    """A CSV file of run records with process-safe appends.

    Args:
        path: The CSV file. Missing parent directories are created on the first append.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.lock_path = self.path + ".lock"

    def __repr__(self) -> str:
        return f"ResultsStore({self.path!r})"

    # -- writing -------------------------------------------------------------------------------

    def append(self, record: RunRecord) -> None:
        """Append one record as one CSV row, atomically with respect to other appenders.

        Raises:
            HwpruneError: if ``record`` is not a RunRecord, the path cannot be written (nothing is
                left behind), or the existing file has a different header (another schema version).
        """
        if not isinstance(record, RunRecord):
            raise HwpruneError(f"ResultsStore.append takes a RunRecord, got {type(record).__name__}")
        line = _encode_line(record.to_row())
        created_dirs = self._check_and_make_parent()
        lock_fd, lock_created = -1, False
        try:
            lock_fd, lock_created = self._open_lock()
            fcntl.flock(lock_fd, fcntl.LOCK_EX)  # released when lock_fd is closed
            self._append_locked(line)
        except BaseException:
            if lock_created and not os.path.exists(self.path):
                _unlink_quiet(self.lock_path)  # we made it and wrote nothing: leave nothing behind
            for d in reversed(created_dirs):
                _rmdir_quiet(d)
            raise
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)

    def _append_locked(self, line: str) -> None:
        """Write ``line`` (plus the header if the file is new or empty); caller holds the lock."""
        data_existed = os.path.exists(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                payload = _encode_line(COLUMNS) + line
            else:
                self._check_header_fd(fd)
                # a row cut short by a crash (e.g. disk full) must not swallow ours
                payload = line if os.pread(fd, 1, size - 1) == b"\n" else "\n" + line
            try:
                _write_all(fd, payload.encode(_ENCODING))  # one write for the whole row
                os.fsync(fd)
            except OSError as e:
                raise HwpruneError(f"could not append to results file {self.path}: {e}") from None
        finally:
            os.close(fd)
        if not data_existed:
            _fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def _check_and_make_parent(self) -> list[str]:
        """Verify the path can hold a file; create missing parent dirs and return those created."""
        path = os.path.abspath(self.path)
        if os.path.isdir(path):
            raise HwpruneError(f"results path {self.path} is a directory; give a .csv file path")
        if os.path.exists(path) and not os.path.isfile(path):
            raise HwpruneError(f"results path {self.path} is not a regular file")
        parent = os.path.dirname(path)
        missing: list[str] = []
        d = parent
        while not os.path.exists(d):
            missing.append(d)
            d = os.path.dirname(d)
        if not os.path.isdir(d):
            raise HwpruneError(f"cannot write results file {self.path}: {d} is a file, not a directory")
        created: list[str] = []
        try:
            for m in reversed(missing):
                os.mkdir(m)
                created.append(m)
        except OSError as e:
            for m in reversed(created):
                _rmdir_quiet(m)
            raise self._unwritable(e) from None
        if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
            raise self._unwritable(OSError(errno.EACCES, "permission denied"))
        return created

    def _open_lock(self) -> tuple[int, bool]:
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), True
        except FileExistsError:
            pass
        except OSError as e:
            raise self._unwritable(e) from None
        try:
            return os.open(self.lock_path, os.O_RDWR), False
        except OSError as e:
            raise self._unwritable(e) from None

    def _unwritable(self, err: OSError) -> HwpruneError:
        reason = err.strerror or str(err)
        return HwpruneError(f"cannot write results file {self.path}: {reason}; choose a writable path (e.g. --results)")

    def _check_header_fd(self, fd: int) -> None:
        head = b""
        offset = 0
        while b"\n" not in head:
            chunk = os.pread(fd, 65536, offset)
            if not chunk:
                break
            head += chunk
            offset += len(chunk)
        first = head.split(b"\n", 1)[0].decode(_ENCODING, errors="replace")
        header = next(csv.reader([first]), [])
        if header != COLUMNS:
            raise _header_mismatch(self.path, header)

    # -- reading -------------------------------------------------------------------------------

    @contextmanager
    def _shared_lock(self) -> Iterator[None]:
        """Hold a shared lock while reading, when the lock file exists and can be opened."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _read_rows(self) -> list[list[str]]:
        """Return the data rows (header checked and dropped); [] if the file is missing or empty."""
        if not os.path.exists(self.path):
            return []
        with self._shared_lock():
            try:
                with open(self.path, newline="", encoding=_ENCODING) as f:
                    rows = list(csv.reader(f))
            except OSError as e:
                raise HwpruneError(f"cannot read results file {self.path}: {e.strerror or e}") from None
            except csv.Error as e:
                raise HwpruneError(f"results file {self.path} is not valid CSV: {e}") from None
            except UnicodeDecodeError as e:
                raise HwpruneError(
                    f"results file {self.path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                    f"{e.start}): it is damaged; restore it from a backup or cut the damaged rows"
                ) from None
        if not rows:
            return []
        if rows[0] != COLUMNS:
            raise _header_mismatch(self.path, rows[0])
        for i, row in enumerate(rows[1:], start=2):
            if len(row) != len(COLUMNS):
                raise HwpruneError(
                    f"results file {self.path}: row {i} has {len(row)} cells, expected {len(COLUMNS)} "
                    "(a torn or hand-edited row); fix or delete that row"
                )
        return rows[1:]

    def records(self) -> list[RunRecord]:
        """Return every row as a :class:`RunRecord` (empty list if the file does not exist).

        Raises:
            HwpruneError: naming the file and row, for a cell of the wrong type or a damaged file.
        """
        out = []
        for i, row in enumerate(self._read_rows(), start=2):
            try:
                out.append(RunRecord.from_dict(dict(zip(COLUMNS, row, strict=True))))
            except HwpruneError as e:
                raise HwpruneError(f"results file {self.path} row {i}: {e}; fix or delete that row") from None
        return out

    def check_header(self) -> None:
        """Refuse (one line) a file whose header is not this schema's; a missing or empty file passes."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
        except OSError as e:
            raise HwpruneError(f"cannot read results file {self.path}: {e.strerror or e}") from None
        try:
            if os.fstat(fd).st_size:
                self._check_header_fd(fd)
        finally:
            os.close(fd)

    def load(self) -> pd.DataFrame:
        """Return the rows as a DataFrame with exactly :data:`COLUMNS` (empty if no file).

        Integer columns use pandas' nullable ``Int64``, float columns ``float64`` (NaN = not
        measured), text columns ``string`` (``<NA>`` = empty).
        """
        import pandas as pd

        records = self.records()
        columns: dict[str, pd.Series] = {}
        for name in COLUMNS:
            base, _ = _FIELD_TYPES[name]
            values = [getattr(r, name) for r in records]
            if base is int:
                columns[name] = pd.Series(values, dtype="Int64")
            elif base is float:
                columns[name] = pd.Series([float("nan") if v is None else v for v in values], dtype="float64")
            else:
                columns[name] = pd.Series(values, dtype="string")
        return pd.DataFrame(columns, columns=COLUMNS)

    def __len__(self) -> int:
        return len(self._read_rows())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _rmdir_quiet(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
