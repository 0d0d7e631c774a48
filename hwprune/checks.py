"""Checks of what a user gives, run before any work starts: numbers, paths, and files against their schemas.

Every check raises a one-line :class:`~hwprune.errors.HwpruneError` that names the offending option
or field and says what to do. The CLI runs them before it builds a model; the library runs the same
ones where it reads a file (:meth:`ChannelMask.load`, :meth:`LUT.load`, the profiler's journal,
:meth:`TrainConfig.validate`) or takes numbers (:func:`hwprune.jobs.prune_to_budget`), so the public
API refuses the same input the same way.

Also here: :class:`StagedDir`, which makes a command's output folder appear whole or not at all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from hwprune.errors import HwpruneError, first_line

# ----------------------------------------------------------------------------- numbers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole(value: Any, name: str, minimum: int = 1, what: str = "") -> int:
    """``value`` as a whole number >= ``minimum``; ``name`` is the option (``--threads``) or field."""
    if not _is_int(value) or value < minimum:
        hint = f" ({what})" if what else ""
        raise HwpruneError(f"{name} must be a whole number >= {minimum}{hint}, got {value!r}")
    return value


def optional_whole(value: Any, name: str, minimum: int = 1, what: str = "") -> int | None:
    """Like :func:`whole`, but None (the default) passes."""
    return None if value is None else whole(value, name, minimum, what)


def real(
    value: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    example: str = "",
) -> float:
    """A finite number within [low, high] (an end is excluded when ``*_open``); None bounds are unbounded."""
    ok = _is_real(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        span = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        hint = f", e.g. {example}" if example else ""
        raise HwpruneError(f"{name} must be a finite number in {span}{hint}, got {value!r}")
    return float(value)


def budget(value: Any, name: str) -> float:
    """A budget: a ratio of the dense model's cost in (0, 1]."""
    if not (_is_real(value) and math.isfinite(value) and 0.0 < value <= 1.0):
        raise HwpruneError(f"{name} is a ratio of the dense model's cost in (0, 1], e.g. 0.5; got {value!r}")
    return float(value)


def ratio_removed(value: Any, name: str = "--ratio") -> float:
    """The share of channels removed per group, in [0, 1)."""
    return real(value, name, 0.0, 1.0, high_open=True, example="0.5")


def kept_fractions(text: Any, name: str = "--points") -> tuple[float, ...]:
    """Comma-separated kept fractions strictly between 0 and 1, e.g. ``0.25,0.5,0.75``."""
    values: list[float] = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            v = float("nan")
        if not (math.isfinite(v) and 0.0 < v < 1.0):
            raise HwpruneError(
                f"{name} takes kept fractions strictly between 0 and 1, comma-separated, e.g. 0.25,0.5,0.75 "
                f"(got {text!r})"
            )
        values.append(v)
    if len(set(values)) != len(values):
        raise HwpruneError(f"{name} lists a fraction twice ({text!r}): give each once")
    return tuple(values)


def input_shape(text: str | None, name: str = "--input-shape") -> tuple[int, ...] | None:
    """A comma-separated list of positive sizes, e.g. ``1,3,224,224`` (None passes)."""
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise HwpruneError(f"{name} {text!r} is not a comma-separated list of positive sizes, e.g. 1,3,224,224")
    return shape


FRONT_ENDS = ("auto", "fx", "export")  # how a PyTorch model is captured (hwprune.graph_mapper.front_end)


def front_end(name: str) -> None:
    if name not in FRONT_ENDS:
        raise HwpruneError(f"unknown front-end {name!r}: use one of {', '.join(FRONT_ENDS)}")


def model_input(
    input_size: Any = None, batch: Any = 1, num_classes: Any = None, in_channels: Any = None, seed: Any = 0
) -> None:
    """The options that build a model and its example input (``hwprune.jobs.ModelInput.build``)."""
    optional_whole(input_size, "--input-size", 1, "square input side in pixels; leave it out for the model's")
    whole(batch, "--batch", 1)
    optional_whole(num_classes, "--num-classes", 1)
    optional_whole(in_channels, "--in-channels", 1)
    if not _is_int(seed):
        raise HwpruneError(f"--seed must be a whole number, got {seed!r}")


def prune_settings(
    target_kind: str,
    target: Any,
    threads: Any = 1,
    repeats: Any = 30,
    tolerance: Any = 0.03,
    round_to: Any = None,
    finetune_epochs: Any = 0,
    sessions: Any = 1,
) -> None:
    """The numbers of a budget run (``hwprune prune`` / :func:`hwprune.jobs.prune_to_budget`)."""
    if target_kind not in ("flops", "params", "latency"):
        raise HwpruneError(f"budget kind must be flops, params or latency (got {target_kind!r})")
    budget(target, f"--{target_kind}")
    timing(threads, repeats)
    real(tolerance, "--tolerance", 0.0, 1.0, low_open=True, high_open=True, example="0.03")
    optional_whole(round_to, "--round-to", 1, "channel counts are kept multiples of it")
    whole(finetune_epochs, "--finetune-epochs", 0)
    whole(sessions, "--sessions", 1, "fresh session pairs a latency ratio is averaged over")


def timing(threads: Any, repeats: Any) -> None:
    """Threads and timed runs per measurement: both at least 1."""
    whole(threads, "--threads", 1)
    whole(repeats, "--repeats", 1, "timed runs per measurement")


def backend(name: str) -> None:
    """A latency backend that is registered and can run on this machine."""
    from hwprune.latency.backends import require_available

    require_available(name)


def model_name(name: str) -> None:
    """A model the zoo knows (one line with close matches otherwise)."""
    from hwprune.models import model_spec

    if not isinstance(name, str) or not name:
        raise HwpruneError(f"--model must be a model name (see `hwprune models`), got {name!r}")
    model_spec(name)


def dataset_name(name: str | None, text: bool = False) -> None:
    """A registered dataset (None passes); a text one only where ``text`` (a language model's importances).

    Training, evaluation, gating and prune-at-init fit classifiers to labelled images: token ids have no labels.
    """
    if name is None:
        return
    from hwprune.data import dataset_kind

    if dataset_kind(name) == "text" and not text:
        raise HwpruneError(
            f"dataset {name!r} is token ids that calibrate a language model's importances (mask, export, prune); "
            "this command needs labelled images: digits works offline"
        )


# ----------------------------------------------------------------------------- paths


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (a file or a folder)."""
    p = path
    while not os.path.lexists(p):
        parent = p.parent
        if parent == p:
            break
        p = parent
    return p


def _probe_write(folder: Path) -> str | None:
    """Why a file cannot be created in ``folder`` (None: it can); creates and removes a probe file.

    ``os.access`` says yes to root on a read-only or immutable folder; a real write does not lie.
    """
    try:
        fd, name = tempfile.mkstemp(prefix=".hwprune-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)
    return None


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def input_file(path: Any, name: str, what: str = "file", hint: str = "") -> Path:
    """An existing, readable regular file. ``hint`` ends the message for a missing file."""
    path = Path(path)
    if path.is_dir():
        raise HwpruneError(f"{name} {path} is a folder, not a file: give the {what} itself")
    if not path.exists():
        anc = _nearest_existing(_parent(path))
        if anc.exists() and not anc.is_dir():
            raise HwpruneError(f"{name} {path}: {anc} is a file, not a folder; check the path")
        raise HwpruneError(f"{name} {path} does not exist{hint or ': check the path'}")
    if not path.is_file():
        raise HwpruneError(f"{name} {path} is not a regular file: give the {what} itself")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise HwpruneError(f"{name} {path} cannot be read ({exc.strerror or exc}): check its permissions") from None
    return path


def input_folder(path: Any, name: str) -> Path:
    """An existing folder (``--data-dir``)."""
    path = Path(path)
    if not path.exists():
        raise HwpruneError(f"{name} {path} does not exist: give the folder that holds the data")
    if not path.is_dir():
        raise HwpruneError(f"{name} {path} is a file, not a folder: give the folder that holds the data")
    return path


def _creatable_in(folder: Path, path: Path, name: str) -> None:
    """Refuse when ``path`` cannot be created below ``folder`` (its missing ancestors made on the way)."""
    anc = _nearest_existing(folder)
    if not anc.exists():  # nothing on the way exists: a relative path off a missing cwd
        raise HwpruneError(f"{name} {path}: no folder on its path exists; give a path in an existing folder")
    if not anc.is_dir():
        raise HwpruneError(f"{name} {path}: {anc} is a file, not a folder; choose a path inside a folder")
    why = _probe_write(anc)
    if why:
        raise HwpruneError(f"{name} {path}: cannot write in {anc} ({why}); choose a writable place")


def output_file(path: Any, name: str, example: str = "out.json", make_parents: bool = False) -> Path:
    """A file that can be written: not a folder; its folder exists (or can be made) and takes files."""
    path = Path(path)
    if path.is_dir():
        raise HwpruneError(f"{name} {path} is a directory: give a file name such as {path / example}")
    if os.path.lexists(path) and not path.is_file():
        raise HwpruneError(f"{name} {path} exists and is not a regular file: choose another path")
    parent = _parent(path)
    if not make_parents and not parent.is_dir():
        anc = _nearest_existing(parent)
        if anc.exists() and not anc.is_dir():
            raise HwpruneError(f"{name} {path}: {anc} is a file, not a folder; choose a path inside a folder")
        raise HwpruneError(
            f"{name} {path}: folder {parent} does not exist; create it (mkdir -p {parent}) or choose another path"
        )
    _creatable_in(parent, path, name)
    return path


def output_dir(path: Any, name: str = "--out") -> Path:
    """A folder that can be written: an existing folder, or a path whose existing ancestor takes files."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise HwpruneError(f"{name} {path} is a file, not a folder: give a folder (it is created if missing)")
    _creatable_in(path, path, name)
    return path


def results_file(path: Any, name: str = "--results") -> Path:
    """A results CSV that can be appended to: writable, and (when it has rows) of this schema."""
    from hwprune.results.store import ResultsStore

    path = output_file(path, name, "results.csv", make_parents=True)
    if path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            raise HwpruneError(
                f"{name} {path} cannot be appended to ({exc.strerror or exc}): choose another file"
            ) from None
        os.close(fd)
        ResultsStore(path).check_header()
    return path


# ----------------------------------------------------------------------------- JSON files against schemas


def _where(path: str) -> str:
    return path or "the top level"


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


class Fields:
    """Checks fields of a parsed JSON document, naming the file and the field path in every message."""

    def __init__(self, what: str, source: Any, fix: str) -> None:
        self.prefix = f"{what} {source}" if source not in (None, "") else what
        self.fix = fix

    def fail(self, field: str, problem: str) -> HwpruneError:
        return HwpruneError(f"{self.prefix}: {_where(field)} {problem}; {self.fix}")

    def mapping(self, value: Any, field: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be a mapping, not {_type_name(value)}")
        return value

    def keys(self, data: dict, field: str, required: Iterable[str], optional: Iterable[str] = ()) -> None:
        required = list(required)
        missing = [k for k in required if k not in data]
        if missing:
            raise self.fail(field, f"lacks the field {missing[0]!r}")
        unknown = sorted(set(data) - set(required) - set(optional))
        if unknown:
            raise self.fail(field, f"has the unknown field {unknown[0]!r}")

    def list(self, value: Any, field: str, nonempty: bool = False) -> list:
        if not isinstance(value, list):
            raise self.fail(field, f"must be a list, not {_type_name(value)}")
        if nonempty and not value:
            raise self.fail(field, "is empty")
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"must be a string, not {_type_name(value)}")
        return value

    def whole(self, value: Any, field: str, minimum: int | None = 0, maximum: int | None = None) -> int:
        if not _is_int(value):
            raise self.fail(field, f"must be a whole number, not {_type_name(value)} ({value!r})")
        if minimum is not None and value < minimum:
            raise self.fail(field, f"is {value}, below {minimum}")
        if maximum is not None and value > maximum:
            raise self.fail(field, f"is {value}, above {maximum}")
        return value

    def number(
        self,
        value: Any,
        field: str,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
        high_open: bool = False,
    ) -> float:
        if not _is_real(value):
            raise self.fail(field, f"must be a number, not {_type_name(value)} ({value!r})")
        if not math.isfinite(value):
            raise self.fail(field, f"is {value}, not a finite number")
        if low is not None and (value <= low if low_open else value < low):
            raise self.fail(field, f"is {value}, must be {'>' if low_open else '>='} {low:g}")
        if high is not None and (value >= high if high_open else value > high):
            raise self.fail(field, f"is {value}, must be {'<' if high_open else '<='} {high:g}")
        return float(value)

    def choice(self, value: Any, field: str, choices: tuple) -> Any:
        if value not in choices:
            raise self.fail(field, f"is {value!r}, not one of {', '.join(map(str, choices))}")
        return value

    def ids(self, value: Any, field: str) -> dict:
        """A mapping of group ids (whole numbers written as strings) to shares in [0, 1]."""
        for gid, share in self.mapping(value, field).items():
            if not re.fullmatch(r"0|[1-9][0-9]*", gid):
                raise self.fail(f"{field} key {gid!r}", "is not a group id (a whole number >= 0 written as a string)")
            self.number(share, f"{field}.{gid}", 0.0, 1.0)
        return value

    def shape(self, value: Any, field: str) -> list[int]:
        self.list(value, field, nonempty=True)
        for i, v in enumerate(value):
            self.whole(v, f"{field}[{i}]", 1)
        return value


def read_json(path: Any, what: str, hint: str = "") -> Any:
    """Parse a JSON file; one line for a missing, unreadable, non-UTF-8 or malformed file.

    NaN and Infinity (which Python's json accepts) are left to the schema checks, which name the field.
    """
    path = Path(path)
    if path.is_dir():
        raise HwpruneError(f"{what} {path} is a folder, not a file: give the file itself")
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HwpruneError(f"{what} {path} does not exist{hint}") from None
    except OSError as exc:
        raise HwpruneError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HwpruneError(
            f"{what} {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}): "
            "it is damaged or not a JSON file"
        ) from None
    try:
        return json.loads(text)
    except ValueError as exc:
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else first_line(exc)
        pos = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise HwpruneError(f"{what} {path} is not valid JSON ({msg}{pos}): it is damaged or truncated") from None


def format_field(data: Any, fmt: str, what: str, path: Any, fix: str) -> dict:
    """The document must be a mapping whose ``format`` is ``fmt``."""
    f = Fields(what, path, fix)
    if not isinstance(data, dict):
        raise HwpruneError(f"{what} {path} is not a {fmt} file (it holds {_type_name(data)}, not a mapping)")
    if data.get("format") != fmt:
        raise HwpruneError(f"{what} {path} is not a {fmt} file (format {data.get('format')!r})")
    return f.mapping(data, "")


MASK_FIX = "make the mask again with `hwprune mask` or fix that field"
MASK_META = {
    # field: check(fields, value, name)
    "method": lambda f, v, n: f.string(v, n),
    "ratio": lambda f, v, n: f.number(v, n, 0.0, 1.0, high_open=True),
    "input_shape": lambda f, v, n: f.shape(v, n),
    "target_kind": lambda f, v, n: f.choice(v, n, ("flops", "params", "latency")),
    "target": lambda f, v, n: f.number(v, n, 0.0, 1.0, low_open=True),
    "data": lambda f, v, n: None if v is None else f.string(v, n),
    "imp_samples": lambda f, v, n: f.whole(v, n, 1),
}


def channel_mask_document(data: Any, path: Any = "") -> dict[int, tuple[int, list[int]]]:
    """Check a parsed channel-mask file; returns ``{group id: (size, kept indices)}``.

    Schema: ``format`` (hwprune.channel_mask/1), ``groups`` (mapping of group id -> ``{"size": n,
    "keep": [i, ...]}`` with whole-number indices 0 <= i < n, each once), optional ``model`` and
    ``fingerprint`` (strings) and ``meta`` (a mapping; its known fields are typed). Nothing else.
    """
    from hwprune.prune.masks import CHANNEL_FORMAT

    f = Fields("mask file", path, MASK_FIX)
    data = format_field(data, CHANNEL_FORMAT, "mask file", path, MASK_FIX)
    f.keys(data, "", ["format", "groups"], ["model", "fingerprint", "meta"])
    for key in ("model", "fingerprint"):
        if key in data:
            f.string(data[key], key)
    meta = f.mapping(data.get("meta", {}), "meta")
    _typed(f, meta, MASK_META, "meta")
    groups = f.mapping(data["groups"], "groups")
    out: dict[int, tuple[int, list[int]]] = {}
    for gid, entry in groups.items():
        if not re.fullmatch(r"0|[1-9][0-9]*", gid):
            raise f.fail(f"groups key {gid!r}", "is not a group id (a whole number >= 0 written as a string)")
        name = f"groups.{gid}"
        entry = f.mapping(entry, name)
        f.keys(entry, name, ["size", "keep"])
        size = f.whole(entry["size"], f"{name}.size", 1)
        keep = f.list(entry["keep"], f"{name}.keep")
        seen = set()
        for i, v in enumerate(keep):
            if not _is_int(v):
                raise f.fail(f"{name}.keep[{i}]", f"is {v!r}, not a whole-number channel index")
            if not 0 <= v < size:
                raise f.fail(f"{name}.keep[{i}]", f"is {v}, outside the group's channels 0..{size - 1}")
            if v in seen:
                raise f.fail(f"{name}.keep[{i}]", f"lists channel {v} twice")
            seen.add(v)
        out[int(gid)] = (size, keep)
    return out


WEIGHT_MASK_FIX = "save the mask again (`hwprune train --mask ... --save-mask`) or fix that field"


def weight_mask_document(data: Any, path: Any = "") -> None:
    """Check a parsed weight-mask file: ``tensors`` maps names to ``{"shape": [...], "bits": hex}``."""
    from hwprune.prune.masks import WEIGHT_FORMAT

    f = Fields("weight mask file", path, WEIGHT_MASK_FIX)
    data = format_field(data, WEIGHT_FORMAT, "weight mask file", path, WEIGHT_MASK_FIX)
    f.keys(data, "", ["format", "tensors"], ["model", "meta"])
    if "model" in data:
        f.string(data["model"], "model")
    f.mapping(data.get("meta", {}), "meta")
    for name, entry in f.mapping(data["tensors"], "tensors").items():
        field = f"tensors.{name}"
        entry = f.mapping(entry, field)
        f.keys(entry, field, ["shape", "bits"])
        shape = f.list(entry["shape"], f"{field}.shape")
        for i, v in enumerate(shape):
            f.whole(v, f"{field}.shape[{i}]", 0)
        bits = f.string(entry["bits"], f"{field}.bits")
        n = math.prod(shape)
        if not re.fullmatch(r"(?:[0-9a-fA-F]{2})*", bits) or len(bits) != 2 * math.ceil(n / 8):
            raise f.fail(f"{field}.bits", f"is not {math.ceil(n / 8)} bytes of hex for {n} weights")


LUT_FIX = "profile again (hwprune profile-edges, or prune --lut-create)"
LUT_META_REQUIRED = ("model", "fingerprint", "input_shape", "backend", "threads")
LUT_META_TYPED = {
    "model": lambda f, v, n: f.string(v, n),
    "fingerprint": lambda f, v, n: f.string(v, n),
    "input_shape": lambda f, v, n: f.shape(v, n),
    "backend": lambda f, v, n: f.string(v, n),
    "threads": lambda f, v, n: f.whole(v, n, 1),
    "points": lambda f, v, n: [f.number(p, f"{n}[{i}]", 0.0, 1.0, True) for i, p in enumerate(f.list(v, n))],
    "repeats": lambda f, v, n: f.whole(v, n, 1),
    "round_to": lambda f, v, n: f.whole(v, n, 1),
    "passes": lambda f, v, n: f.whole(v, n, 1),
    "exporter": lambda f, v, n: f.string(v, n),
    "per_op": lambda f, v, n: f.choice(v, n, (True, False)),
    "kernel_table": lambda f, v, n: f.choice(v, n, (True, False)),
    "device": lambda f, v, n: f.string(v, n),
    "versions": lambda f, v, n: f.mapping(v, n),
}
EDGE_FIELDS = {
    "group": lambda f, v, n: f.whole(v, n, 0),
    "name": lambda f, v, n: f.string(v, n),
    "size": lambda f, v, n: f.whole(v, n, 1),
    "kept": lambda f, v, n: f.whole(v, n, 0),
    "point": lambda f, v, n: f.number(v, n, 0.0, 1.0, True),
    "baseline_ms": lambda f, v, n: f.number(v, n, 0.0, None, True),
    "latency_ms": lambda f, v, n: f.number(v, n),
    "iqr_ms": lambda f, v, n: f.number(v, n, 0.0),
    "macs_before": lambda f, v, n: f.number(v, n, 0.0),
    "macs_after": lambda f, v, n: f.number(v, n, 0.0),
}
CALIBRATION_FIELDS = {
    "index": lambda f, v, n: f.whole(v, n, 0),
    "shares": lambda f, v, n: f.ids(v, n),
    "baseline_ms": lambda f, v, n: f.number(v, n, 0.0, None, True),
    "latency_ms": lambda f, v, n: f.number(v, n),
}
OP_MS = lambda f, v, n: [f.number(ms, f"{n}.{t}", 0.0) for t, ms in f.mapping(v, n).items()]  # noqa: E731


def _calibration(f: Fields, c: Any, field: str) -> None:
    """One calibration record: CALIBRATION_FIELDS, optionally ``op_ms`` (per op) and ``rest_ms`` (outside them)."""
    missing = [k for k in CALIBRATION_FIELDS if k not in c]
    if missing:
        raise f.fail(field, f"lacks the field {missing[0]!r}")
    _typed(f, c, CALIBRATION_FIELDS, field)
    if "op_ms" in c:
        OP_MS(f, c["op_ms"], f"{field}.op_ms")
    if "rest_ms" in c:
        f.number(c["rest_ms"], f"{field}.rest_ms", 0.0)


def _typed(f: Fields, data: dict, checks: dict, field: str) -> None:
    """Run each field's check (each raises its own one-line error)."""
    for key, check in checks.items():
        if key in data:
            check(f, data[key], f"{field}.{key}" if field else key)


def _edge_point(f: Fields, p: Any, field: str, extra: Iterable[str] = ()) -> None:
    p = f.mapping(p, field)
    f.keys(p, field, list(EDGE_FIELDS), ["passes", *extra])
    _typed(f, p, EDGE_FIELDS, field)
    if "passes" in p:
        f.whole(p["passes"], f"{field}.passes", 1)
    if not p["kept"] <= p["size"]:
        raise f.fail(f"{field}.kept", f"is {p['kept']}, more than the group's {p['size']} channels")


def lut_document(data: Any, path: Any = "") -> None:
    """Check a parsed LUT file (hwprune.lut/1).

    Schema: ``format``; ``meta`` with ``model``, ``fingerprint``, ``input_shape``, ``backend`` and
    ``threads`` (other settings typed when present); ``points``, a list of edge points (group, name,
    size, kept, point, baseline_ms, latency_ms, iqr_ms, macs_before, macs_after, passes; finite
    numbers); optional ``calibration``, a list of {index, shares, baseline_ms, latency_ms, and
    optionally op_ms: weight -> ms}. At least one measurement in all. Nothing else.
    """
    from hwprune.latency.lut import LUT_FORMAT

    f = Fields("LUT", path, LUT_FIX)
    data = format_field(data, LUT_FORMAT, "LUT", path, LUT_FIX)
    f.keys(data, "", ["format", "meta", "points"], ["calibration", "kernels"])
    meta = f.mapping(data["meta"], "meta")
    f.keys(meta, "meta", LUT_META_REQUIRED, meta.keys())
    _typed(f, meta, LUT_META_TYPED, "meta")
    calibration = f.list(data.get("calibration", []), "calibration")
    for i, p in enumerate(f.list(data["points"], "points", nonempty=not calibration)):
        _edge_point(f, p, f"points[{i}]")
    for i, c in enumerate(calibration):
        field = f"calibration[{i}]"
        c = f.mapping(c, field)
        f.keys(c, field, list(CALIBRATION_FIELDS), ["op_ms", "rest_ms"])
        _calibration(f, c, field)
    for weight, axes in f.mapping(data.get("kernels", {}), "kernels").items():
        for i, entry in enumerate(f.list(axes, f"kernels.{weight}", nonempty=True)):
            _kernel_axis(f, entry, f"kernels.{weight}[{i}]")


def _kernel_axis(f: Fields, entry: Any, field: str) -> None:
    """One axis of a kernel table: ``axis``, ascending whole ``counts`` and as many positive ``ms``."""
    entry = f.mapping(entry, field)
    f.keys(entry, field, ["axis", "counts", "ms"])
    f.whole(entry["axis"], f"{field}.axis", 0)
    counts = [
        f.whole(c, f"{field}.counts[{i}]", 1) for i, c in enumerate(f.list(entry["counts"], f"{field}.counts", True))
    ]
    ms = [f.number(v, f"{field}.ms[{i}]", 0.0, None, True) for i, v in enumerate(f.list(entry["ms"], f"{field}.ms"))]
    if len(ms) != len(counts) or counts != sorted(set(counts)):
        raise f.fail(field, "needs strictly ascending counts and one time per count")


JOURNAL_FIX = "delete that line to measure it again, or delete the journal to start over"
JOURNAL_HEADER = {
    "kind": lambda f, v, n: f.choice(v, n, ("header",)),
    "model": LUT_META_TYPED["model"],
    "fingerprint": LUT_META_TYPED["fingerprint"],
    "input_shape": LUT_META_TYPED["input_shape"],
    "backend": LUT_META_TYPED["backend"],
    "threads": LUT_META_TYPED["threads"],
    "points": LUT_META_TYPED["points"],
    "repeats": LUT_META_TYPED["repeats"],
    "round_to": LUT_META_TYPED["round_to"],
    "passes": LUT_META_TYPED["passes"],
    "exporter": LUT_META_TYPED["exporter"],
    "per_op": lambda f, v, n: f.choice(v, n, (True, False)),
    "kernel_table": lambda f, v, n: f.choice(v, n, (True, False)),
}


def journal_record(record: Any, path: Any, line: int, header: bool = False) -> dict:
    """Check one parsed journal line (the header, an edge or a calibration measurement)."""
    f = Fields(f"journal {path} line {line}", "", JOURNAL_FIX)
    rec = f.mapping(record, "the record")
    kind = rec.get("kind")
    if header:
        if kind != "header":
            raise f.fail("the first line", f"is not the journal's header (kind {kind!r})")
        f.keys(rec, "the header", ["kind", "model", "fingerprint", "input_shape", "backend", "threads"], JOURNAL_HEADER)
        _typed(f, rec, JOURNAL_HEADER, "header")
        return rec
    if kind == "edge":
        _edge_point(f, {k: v for k, v in rec.items() if k in EDGE_FIELDS or k == "passes"}, "the edge record")
        if "pass" in rec:
            f.whole(rec["pass"], "the edge record.pass", 0)
    elif kind == "calibration":
        _calibration(f, rec, "the calibration record")
    else:
        raise f.fail("the record", f"has kind {kind!r}, not 'edge' or 'calibration'")
    return rec


# ----------------------------------------------------------------------------- config files

CONFIG_SUFFIXES = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}


def read_config(path: Any) -> dict:
    """A config file's mapping of option names to values (JSON, or YAML for .yaml/.yml); one-line errors."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in CONFIG_SUFFIXES and suffix:
        raise HwpruneError(
            f"--config {path}: {suffix} files are not read; write the options as JSON (.json) or YAML (.yaml)"
        )
    input_file(path, "--config", "config file")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HwpruneError(f"--config {path} is not UTF-8 text (offset {exc.start}): save it as UTF-8") from None
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or first_line(exc)
            raise HwpruneError(f"--config {path} is not valid YAML ({problem}{where}): fix the file") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HwpruneError(
                f"--config {path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): fix the file"
            ) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise HwpruneError(
            f"--config {path} holds {_type_name(values)}; it must be a mapping of option names to values "
            "(e.g. `ratio: 0.5`)"
        )
    for key in values:
        if not isinstance(key, str):
            raise HwpruneError(f"--config {path}: option name {key!r} is not a string: write it as `name: value`")
    return values


def config_value(action: Any, key: str, value: Any, path: Any) -> Any:
    """``value`` for ``action`` (an argparse action) from a config file, converted and checked like the CLI would."""
    import argparse

    where = f"--config {path}: option {key}"
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise HwpruneError(f"{where} is a switch: give true or false, not {value!r}")
        return value
    if value is None:
        if action.default is None:
            return None
        raise HwpruneError(f"{where} is null: give a value, or remove the line for the default ({action.default})")
    if isinstance(value, (list, dict)):
        raise HwpruneError(
            f"{where} takes one value, not {_type_name(value)}; write a list as a comma-separated string, "
            'e.g. "0.25,0.5"'
        )
    kind = action.type
    if kind is int:
        if isinstance(value, bool) or isinstance(value, float) or not isinstance(value, (int, str)):
            raise HwpruneError(f"{where} must be a whole number, not {value!r}")
    elif kind is float:
        if isinstance(value, bool):
            raise HwpruneError(f"{where} must be a number, not {value!r}")
    elif isinstance(value, bool):
        raise HwpruneError(f"{where} must be {'a path' if kind is Path else 'a string'}, not {value!r}")
    elif kind is Path and not isinstance(value, str):
        raise HwpruneError(f"{where} must be a path (a string), not {value!r}")
    if kind is not None:
        try:
            value = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            name = {int: "a whole number", float: "a number"}.get(kind, "a valid value")
            raise HwpruneError(f"{where} must be {name}, not {value!r}") from None
    elif not isinstance(value, str):
        value = str(value)  # `model: 12` is the name "12" (refused by name below if unknown)
    if action.choices is not None and value not in action.choices:
        raise HwpruneError(f"{where} is {value!r}; choose one of {', '.join(map(str, action.choices))}")
    return value


# ----------------------------------------------------------------------------- ONNX files


def onnx_file(path: Any, input_shape_given: bool, name: str = "--onnx") -> None:
    """An ONNX file the mapper can take: readable, passing onnx.checker, one input with a fixable shape."""
    import onnx

    path = input_file(path, name, "ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf errors come in many types
        raise HwpruneError(f"{name} {path} is not an ONNX model ({first_line(exc)})") from None
    if not model.graph.node or not model.opset_import:
        raise HwpruneError(f"{name} {path} is not an ONNX model (no graph nodes or opset)")
    try:
        onnx.checker.check_model(str(path))  # from the file: a model over 2 GB keeps its weights beside it
    except Exception as exc:
        raise HwpruneError(
            f"{name} {path} is not a valid ONNX model ({first_line(exc)}): fix or re-export the file"
        ) from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if not inputs:
        raise HwpruneError(f"{name} {path} has no graph input: re-export it with its input")
    if input_shape_given:
        return
    for inp in inputs:
        t = inp.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
        if dims is None or None in dims[1:] or (len(inputs) > 1 and None in dims):
            shown = "[" + ", ".join("?" if d is None else str(d) for d in dims or []) + "]"
            text = "(none declared)" if dims is None else shown
            if len(inputs) == 1:
                raise HwpruneError(
                    f"{name} {path}: input {inp.name} has dynamic dimensions {text}; give --input-shape, "
                    "e.g. 1,3,224,224"
                )
            raise HwpruneError(
                f"{name} {path}: input {inp.name} has dynamic dimensions {text} and the model has "
                f"{len(inputs)} inputs; give every input a static shape in the file"
            )


# ----------------------------------------------------------------------------- budgets


def reachable_budget(
    graph: Any, groups: list, cost: Any, target: float, kind: str, round_to: int, min_steps: int = 1
) -> None:
    """Refuse a FLOPs/params budget below what the solver can reach, naming the floor and what binds it.

    The floor: every group the solver acts on at its minimum kept channels (``prune.budget``'s
    ``min_fraction`` and whole units of ``round_to``); what remains is the minimum kept plus every
    layer no prunable group reaches.
    """
    from hwprune.prune.budget import min_keep
    from hwprune.prune.channel import unit_of

    base = cost.total({})
    if not base > 0:
        return
    at_min = {g.id: min_keep(g, unit_of(g, round_to, min_steps), MIN_FRACTION) / g.size for g in groups}
    floor = cost.total(at_min) / base
    if target >= floor - 1e-9:
        return
    fixed = cost.total({g.id: 0.0 for g in groups}) / base  # what no prunable group can remove
    if fixed >= floor - fixed:
        bound = (
            f"layers no prunable group reaches (frozen groups, unprunable ops: {fixed:.3f} of the cost; "
            "`hwprune map` lists the frozen groups)"
        )
    else:
        bound = (
            f"the minimum every prunable group keeps ({MIN_FRACTION:.0%} of its channels, in whole --round-to "
            f"{round_to} units: {floor - fixed:.3f} of the cost)"
        )
    raise HwpruneError(
        f"--{kind} {target:g} is unreachable for {graph.model_name}: the best reachable ratio is {floor:.3f}, "
        f"bound by {bound}; give --{kind} {math.ceil(floor * 1000) / 1000:.3f} or more"
    )


MIN_FRACTION = 0.05  # prune.budget.solve's default min_fraction (what prune_to_budget uses)


# ----------------------------------------------------------------------------- outputs staged, then moved


class StagedDir:
    """A command's output folder, written in a hidden folder beside it and moved into place at the end.

    ``with StagedDir(out) as stage:`` gives ``stage.path`` to write into. On success (:meth:`commit`,
    called by the ``with`` on a clean exit) every file is moved into ``out`` (created if missing; files
    of the same name replaced, others left alone). On any exception the staging folder is removed and
    so are the ancestors of ``out`` this run created, so a failed run leaves the disk as it was.
    A staging folder left by a killed run (SIGKILL) is removed by the next run into the same ``out``.
    """

    PREFIX = ".hwprune-stage"

    def __init__(self, final: Any) -> None:
        self.final = Path(final)
        self.created: list[Path] = []
        self.path = self.final  # set on enter
        self.committed = False

    def __enter__(self) -> StagedDir:
        parent = _parent(self.final).absolute()
        missing = []
        p = parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            for m in reversed(missing):
                m.mkdir()
                self.created.append(m)
        except OSError as exc:
            self._remove_created()
            raise HwpruneError(f"cannot create folder {m} for {self.final}: {exc.strerror or exc}") from None
        self._remove_stale(parent)
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f"{self.PREFIX}-{self.final.name}-{os.getpid()}-", dir=parent))
        except OSError as exc:
            self._remove_created()
            raise HwpruneError(f"cannot write in {parent} for {self.final}: {exc.strerror or exc}") from None
        return self

    def _remove_stale(self, parent: Path) -> None:
        for old in parent.glob(f"{self.PREFIX}-{glob_escape(self.final.name)}-*"):
            m = re.fullmatch(rf"{re.escape(self.PREFIX)}-.*-(\d+)-[^-]+", old.name)
            if m and not _alive(int(m.group(1))):
                shutil.rmtree(old, ignore_errors=True)

    def staged(self, name: str) -> Path:
        return self.path / name

    def final_path(self, p: Any) -> Path:
        """Where a staged path ends up."""
        p = Path(p)
        try:
            return self.final / p.relative_to(self.path)
        except ValueError:
            return p

    def rewrite(self, text: str | None) -> str | None:
        """``text`` with the staging folder replaced by the output folder (for paths recorded in rows)."""
        return None if text is None else text.replace(str(self.path), str(self.final))

    def commit(self) -> list[Path]:
        """Move every staged file into the output folder; returns the final paths."""
        self.final.mkdir(parents=True, exist_ok=True)
        moved = []
        for src in sorted(self.path.rglob("*")):
            if src.is_dir():
                continue
            dst = self.final / src.relative_to(self.path)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
            moved.append(dst)
        shutil.rmtree(self.path, ignore_errors=True)
        self.committed = True
        return moved

    def _remove_created(self) -> None:
        for d in reversed(self.created):
            with contextlib.suppress(OSError):
                d.rmdir()  # only when empty: a concurrent writer's files stay

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.committed:
            self.commit()
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)
            self._remove_created()


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def created_dir(path: Any) -> Iterator[Path]:
    """Make folder ``path`` (and missing ancestors) for the block; on an exception remove those made, if empty."""
    path = Path(path).absolute()
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    made = []
    try:
        for m in reversed(missing):
            m.mkdir()
            made.append(m)
        yield path
    except BaseException:
        for d in reversed(made):
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def read_format_json(path: str | Path, fmt: str, what: str = "mask file", missing_hint: str = "") -> dict:
    """Read a JSON file of hwprune format ``fmt``; one-line errors for missing, unreadable or foreign files."""
    return format_field(read_json(path, what, missing_hint), fmt, what, path, "")
