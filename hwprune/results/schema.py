"""The results row: one :class:`RunRecord` per run, one CSV column per field.

This module must not import torch (the results store is read by light tools and notebooks).

Semantics (see docs/architecture.md):

- ``density`` = kept / total over the prunable tensors (channels or weights), in [0, 1];
  ``density_whole_model`` is the same over every parameter; ``compression_ratio`` = 1 / density
  (filled in from ``density`` when not given). Sparsity = 1 - density.
- ``flops`` counts one multiply-add as one FLOP (fvcore's convention); ``flops_counter`` names the
  counter that produced it.
- ``accuracy_top1`` / ``accuracy_top5`` are fractions in [0, 1], not percentages.
- ``artifacts`` and ``extra`` are JSON-encoded objects (a dict may be passed; it is encoded).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import operator
import os
import subprocess
import types
import typing
import uuid
from dataclasses import dataclass, field, fields
from typing import Any

from hwprune.errors import HwpruneError

__all__ = ["COLUMNS", "MASK_KINDS", "TARGET_KINDS", "RunRecord", "current_git_sha", "utc_now_iso"]

MASK_KINDS = ("channel", "weight", "none")
TARGET_KINDS = ("flops", "params", "latency", "density", "none")


def utc_now_iso() -> str:
    """Return the current UTC time as ISO 8601 with seconds, e.g. ``2025-01-31T12:00:00+00:00``."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def current_git_sha(cwd: str | os.PathLike[str] | None = None) -> str | None:
    """Return the commit sha checked out at ``cwd``, or None when it is not in a git repository.

    Args:
        cwd: Directory to ask; defaults to the ``hwprune`` package directory, i.e. the
            sha of the code that produced the run.
    """
    if cwd is None:
        cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and sha else None


@dataclass(kw_only=True)
class RunRecord:
    """One run of the suite: what was pruned, how, to what target, and what it measured.

    Only ``model``, ``dataset`` and ``method`` are required; every other field has a default
    (None for anything not measured).
    """

    run_id: str = field(default_factory=_new_run_id)
    time: str = field(default_factory=utc_now_iso)
    git_sha: str | None = None
    model: str
    dataset: str
    method: str
    mask_kind: str = "none"
    target_kind: str = "none"
    target_value: float | None = None
    density: float | None = None
    density_whole_model: float | None = None
    compression_ratio: float | None = None
    params: int | None = None
    params_before: int | None = None
    flops: int | None = None
    flops_before: int | None = None
    flops_counter: str | None = None
    latency_backend: str | None = None
    latency_ms_median: float | None = None
    latency_ms_iqr: float | None = None
    latency_threads: int | None = None
    latency_batch: int | None = None
    latency_before_ms: float | None = None
    accuracy_top1: float | None = None
    accuracy_top5: float | None = None
    seed: int | None = None
    notes: str | None = None
    artifacts: str | None = None
    extra: str | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name)))
        if self.mask_kind not in MASK_KINDS:
            raise HwpruneError(f"mask_kind {self.mask_kind!r} is not one of {', '.join(MASK_KINDS)}")
        if self.target_kind not in TARGET_KINDS:
            raise HwpruneError(f"target_kind {self.target_kind!r} is not one of {', '.join(TARGET_KINDS)}")
        for name in ("density", "density_whole_model", "accuracy_top1", "accuracy_top5"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise HwpruneError(
                    f"{name}={value} is outside [0, 1]; it is a fraction (density = kept/total, "
                    "accuracy as a fraction, not a percentage)"
                )
        if self.density is not None and self.density > 0:
            ratio = 1.0 / self.density
            if self.compression_ratio is None:
                self.compression_ratio = ratio
            elif not math.isclose(self.compression_ratio, ratio, rel_tol=1e-6):
                raise HwpruneError(
                    f"compression_ratio={self.compression_ratio} is not 1/density={ratio}; "
                    "give density (kept/total) and leave compression_ratio empty"
                )

    # -- conversions ---------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: typing.Mapping[str, Any]) -> RunRecord:
        """Build a record from a mapping of field name -> value.

        Values may be typed Python values or the strings of a CSV row ("" means None); NaN and
        ``pandas.NA`` also mean None, so a DataFrame row converts back.

        Raises:
            HwpruneError: on unknown keys, missing required fields, or a value of the wrong type.
        """
        unknown = [k for k in data if k not in _FIELD_TYPES]
        if unknown:
            raise HwpruneError(
                f"unknown RunRecord field(s): {', '.join(map(str, unknown))}; known fields are {', '.join(COLUMNS)}"
            )
        missing = [k for k in ("model", "dataset", "method") if _is_missing(data.get(k))]
        if missing:
            raise HwpruneError(f"RunRecord is missing required field(s): {', '.join(missing)}")
        kwargs = {k: v for k, v in data.items() if not (_is_missing(v) and k in ("run_id", "time"))}
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as an ordered dict (order = :data:`COLUMNS`)."""
        return {name: getattr(self, name) for name in COLUMNS}

    def to_row(self) -> list[str]:
        """Return the CSV cells in :data:`COLUMNS` order (None -> "", floats in round-trip form)."""
        return [_encode_cell(getattr(self, name)) for name in COLUMNS]

    def artifacts_dict(self) -> dict[str, Any]:
        """Return :attr:`artifacts` decoded (empty dict when None)."""
        return json.loads(self.artifacts) if self.artifacts else {}

    def extra_dict(self) -> dict[str, Any]:
        """Return :attr:`extra` decoded (empty dict when None)."""
        return json.loads(self.extra) if self.extra else {}


COLUMNS: list[str] = [f.name for f in fields(RunRecord)]

_JSON_FIELDS = ("artifacts", "extra")


def _field_types() -> dict[str, tuple[type, bool]]:
    """Map field name -> (base type, optional?) from the annotations."""
    hints = typing.get_type_hints(RunRecord)
    out: dict[str, tuple[type, bool]] = {}
    for name in COLUMNS:
        hint = hints[name]
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            base = next(a for a in args if a is not type(None))
            out[name] = (base, type(None) in args)
        else:
            out[name] = (hint, False)
    return out


_FIELD_TYPES = _field_types()


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):
        return value == ""
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")  # pandas.NA / NaT without importing pandas


def _coerce(name: str, value: Any) -> Any:
    base, optional = _FIELD_TYPES[name]
    if _is_missing(value):
        if optional:
            return None
        raise HwpruneError(f"RunRecord field {name} is required and cannot be empty")
    if name in _JSON_FIELDS:
        return _coerce_json(name, value)
    try:
        return _convert(base, value)
    except (TypeError, ValueError):
        raise HwpruneError(f"RunRecord field {name} expects {base.__name__}, got {value!r}") from None


def _convert(base: type, value: Any) -> Any:
    """Convert ``value`` to ``base`` (str, int or float); TypeError/ValueError when it does not fit."""
    if base is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    if isinstance(value, bool):
        raise TypeError(value)
    if base is int:
        if isinstance(value, str):
            return int(value.strip())
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(value)
            return int(value)
        return operator.index(value)
    if base is float:
        if isinstance(value, str):
            return float(value.strip())
        if isinstance(value, (int, float)) or hasattr(value, "__float__"):
            return float(value)
        raise TypeError(value)
    raise TypeError(f"unsupported field type {base!r}")


def _coerce_json(name: str, value: Any) -> str:
    if isinstance(value, dict):
        try:
            return json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError) as e:
            raise HwpruneError(f"RunRecord field {name}: cannot JSON-encode {value!r} ({e})") from None
    if not isinstance(value, str):
        raise HwpruneError(f"RunRecord field {name} must be a JSON object or a dict, got {value!r}")
    try:
        decoded = json.loads(value)
    except ValueError:
        raise HwpruneError(f"RunRecord field {name} must be a JSON object, got {value!r}") from None
    if not isinstance(decoded, dict):
        raise HwpruneError(f"RunRecord field {name} must be a JSON object, got {value!r}")
    return value


def _encode_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)
