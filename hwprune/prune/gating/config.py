"""The gating configuration: GATOR's cfg-file keys plus a target, read from JSON and checked.

GATOR's cfg files (``factor_type``, ``criteria_weight``, ``gradient_multiplier``, ``gate_init_prob``,
``static_total_cost``, ``edge_multipliers``) load unchanged; ``target``, ``temperature`` and
``round_to`` are hwprune's additions. Costs are in hwprune's units (multiply-adds for ``flop_factor``, parameters for
``memory_factor``), so a ``static_total_cost`` copied from a GATOR file (its own units) does not
carry over: leave it out and it defaults to the model's total cost.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwprune import checks
from hwprune.errors import HwpruneError

FACTOR_TYPES = ("flop_factor", "memory_factor")
CONFIG_FIX = "see docs/gating.md for the keys and their types"


@dataclass(frozen=True)
class GatingConfig:
    """How gates are trained.

    Attributes:
        factor_type: ``flop_factor`` (a channel costs the multiply-adds it takes part in) or
            ``memory_factor`` (the parameters it takes part in).
        criteria_weight: Weight of the cost term against the task loss.
        gradient_multiplier: Scales every gate's gradient (GATOR: divided by the gate's own cost
            weight, so the cost term pushes every open gate equally and the task term decides).
        gate_init_prob: Initial probability that a gate passes (one value, or one per gated group).
        static_total_cost: Divisor of the cost term; None = the model's total cost.
        edge_multipliers: One multiplier per gated group (graph order), or None (all 1); a LUT
            (``--lut``) supplies latency multipliers instead.
        target: Stop adding cost pressure once the cost term is at most this fraction of its dense
            value (None: never stop); gates closed so far stay closed.
        temperature: Sigmoid temperature of the gates.
        round_to: Channels one gate stands for, so that kept counts stay multiples of it (hardware
            alignment; 1 = GATOR's gate per channel).
    """

    factor_type: str = "flop_factor"
    criteria_weight: float = 1.0
    gradient_multiplier: float = 0.2
    gate_init_prob: float | tuple[float, ...] = 0.995
    static_total_cost: float | None = None
    edge_multipliers: tuple[float, ...] | None = None
    target: float | None = None
    temperature: float = 1.0
    round_to: int = 1

    def replace(self, **changes: Any) -> GatingConfig:
        """A copy with ``changes`` (CLI overrides), checked like a config file."""
        return from_mapping({**self.to_json(), **changes}, "the overrides")

    def to_json(self) -> dict:
        """The settings as JSON values (what a results row records)."""
        data = dataclasses.asdict(self)
        for key in ("gate_init_prob", "edge_multipliers"):
            if isinstance(data[key], tuple):
                data[key] = list(data[key])
        return data


KEYS = tuple(f.name for f in dataclasses.fields(GatingConfig))


def _probability(f: checks.Fields, value: Any, field: str) -> float:
    return f.number(value, field, 0.0, 1.0, low_open=True, high_open=True)


def _prob_or_list(f: checks.Fields, value: Any, field: str) -> float | tuple[float, ...]:
    if isinstance(value, list):
        return tuple(_probability(f, v, f"{field}[{i}]") for i, v in enumerate(f.list(value, field, nonempty=True)))
    return _probability(f, value, field)


def _multipliers(f: checks.Fields, value: Any, field: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    return tuple(f.number(v, f"{field}[{i}]", 0.0) for i, v in enumerate(f.list(value, field, nonempty=True)))


def _optional(check):
    return lambda f, v, n: None if v is None else check(f, v, n)


CHECKS = {
    "factor_type": lambda f, v, n: f.choice(f.string(v, n), n, FACTOR_TYPES),
    "criteria_weight": lambda f, v, n: f.number(v, n, 0.0),
    "gradient_multiplier": lambda f, v, n: f.number(v, n, 0.0, low_open=True),
    "gate_init_prob": _prob_or_list,
    "static_total_cost": _optional(lambda f, v, n: f.number(v, n, 0.0, low_open=True)),
    "edge_multipliers": _multipliers,
    "target": _optional(lambda f, v, n: f.number(v, n, 0.0, 1.0, low_open=True)),
    "temperature": lambda f, v, n: f.number(v, n, 0.0, low_open=True),
    "round_to": lambda f, v, n: f.whole(v, n, 1),
}


def from_mapping(data: Any, source: Any = "") -> GatingConfig:
    """Build a :class:`GatingConfig` from a parsed JSON object; one-line error naming a bad key."""
    f = checks.Fields("gating config", source, CONFIG_FIX)
    f.keys(f.mapping(data, ""), "", [], KEYS)
    return GatingConfig(**{key: CHECKS[key](f, value, key) for key, value in data.items()})


def load_config(path: str | Path) -> GatingConfig:
    """Read a gating config JSON file (GATOR's cfg shape); one-line error for any problem."""
    return from_mapping(checks.read_json(path, "gating config", ": write one (see docs/gating.md)"), path)


def per_group(value: float | tuple[float, ...] | None, count: int, key: str, default: float) -> list[float]:
    """One value per gated group from a scalar or a list, checked against the number of groups."""
    if value is None:
        return [default] * count
    if isinstance(value, tuple):
        if len(value) != count:
            raise HwpruneError(
                f"gating config: {key} has {len(value)} values, but the model has {count} gated groups "
                "(one per prunable exact group, graph order; see `hwprune gate --list-groups`)"
            )
        return list(value)
    return [float(value)] * count
