"""GATOR channel gating (hardware-aware gates trained with a cost term) on any architecture the mapper reads.

A hard gate per channel of every prunable group, trained with the task loss plus a FLOPs, memory or
latency cost term, then converted to a ChannelMask that the existing export path compacts and
verifies. Modules: ``config`` (the cfg file), ``gates`` (gates on weights), ``cost`` (the
criterion), ``multipliers`` (from a LUT), ``objective`` (trainer hooks), ``convert`` (gates to
mask), ``run`` (:func:`gate`, the one call), ``ship`` (export, timing, results row).
"""

from hwprune.prune.gating.config import GatingConfig, load_config
from hwprune.prune.gating.convert import gates_to_mask
from hwprune.prune.gating.gates import GatedModel, gate_layout
from hwprune.prune.gating.run import GateResult, gate

__all__ = ["GateResult", "GatedModel", "GatingConfig", "gate", "gate_layout", "gates_to_mask", "load_config"]
