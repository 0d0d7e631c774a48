"""GATOR's training objective for the built-in trainer: the cost term, gate gradients, closing, the target.

After every optimizer step: gates whose logit fell below 0 close for good, the per-channel costs are
recomputed from the groups' open counts (GATOR's adaptive factors), each gate's gradient scale
becomes ``gradient_multiplier / (its cost weight)`` (GATOR's gradient adjustment: the cost term then
pushes every open gate at the same rate, and the task gradient, relative to the gate's cost, decides
which stay), and the cost ratio is compared with the target: at or below it, the cost term is no
longer added and the gates no longer move or sample noise (pruning holds; the network trains as the
converted model). Gates train without momentum, so that they stop at once.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hwprune.prune.gating.config import GatingConfig
from hwprune.prune.gating.cost import GateCost
from hwprune.prune.gating.gates import GatedModel
from hwprune.train.objective import Objective


class GatingObjective(Objective):
    """Task loss + ``criteria_weight x`` the cost term of ``gated``'s last forward pass.

    Args:
        gated: The gated model being trained.
        cost: Its cost criterion.
        config: The gating configuration.
        subdivision: Parts each batch is split into (gradient accumulation).
    """

    def __init__(self, gated: GatedModel, cost: GateCost, config: GatingConfig, subdivision: int = 1) -> None:
        self.gated = gated
        self.cost = cost
        self.config = config
        self.subdivision = subdivision
        self.static_total = config.static_total_cost or cost.total
        self.dense = cost.dense_value()
        self.group_of_slot = gated.layout.group_of_slot()
        self.per_slot = np.asarray(gated.layout.channels_per_slot, float)[self.group_of_slot]
        self.history: list[dict] = []
        self.steps = 0
        self.refresh()

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The model's parameters, then the gates: no weight decay, no momentum for them.

        Decay would pull every gate toward probability 0.5; momentum would carry gates on closing
        after the target is reached.
        """
        gates = {id(self.gated.logits)}
        rest = [p for p in model.parameters() if id(p) not in gates]
        return [{"params": rest}, {"params": [self.gated.logits], "weight_decay": 0.0, "momentum": 0.0}]

    def extra_loss(self) -> torch.Tensor | None:
        if self.holding or self.config.criteria_weight == 0:
            return None
        gates = self.gated.last_gates
        return self.config.criteria_weight * (self.slot_weights.to(gates.device) @ gates)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute cost weights, gradient scales and the cost ratio from the open counts."""
        counts = self.gated.open_counts()
        weights = self.cost.weights(counts)[self.group_of_slot] * self.per_slot / self.static_total
        device = self.gated.logits.device
        self.slot_weights = torch.as_tensor(weights, dtype=self.gated.logits.dtype, device=device)
        self.ratio = self.cost.value(counts) / self.dense
        self.total_ratio = self.cost.total_cost(counts) / self.cost.total
        self.open_share = float(counts.sum() / self.cost.sizes.sum())
        self.holding = self.config.target is not None and self.ratio <= self.config.target
        scale = np.divide(
            self.config.gradient_multiplier, weights, out=np.zeros_like(weights), where=weights > 0
        )  # a gate that costs nothing gets no gradient: nothing to trade its channel against
        if self.holding:  # the gates stay as they are
            scale[:] = 0.0
        self.gated.grad_scale.copy_(torch.as_tensor(scale, dtype=self.gated.grad_scale.dtype))
        self.gated.holding = self.holding

    def after_step(self) -> None:
        self.steps += 1
        self.gated.deactivate()
        self.refresh()

    def state(self) -> dict:
        """Where pruning stands: cost ratio, total-cost ratio, open channels, holding."""
        return {
            "cost_ratio": self.ratio,
            f"{'macs' if self.config.factor_type == 'flop_factor' else 'params'}_ratio": self.total_ratio,
            "open_channels": self.open_share,
            "holding": self.holding,
            "steps": self.steps,
        }

    def epoch_metrics(self) -> dict:
        state = self.state()
        self.history.append(state)
        return {k: int(v) if isinstance(v, (bool, int)) else float(v) for k, v in state.items()}
