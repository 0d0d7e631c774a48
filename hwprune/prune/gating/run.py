"""GATOR gating as one call: map the model, insert gates, train with the cost term, convert to a mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from hwprune.errors import HwpruneError
from hwprune.graph_mapper import build_channel_graph
from hwprune.prune.gating.config import GatingConfig, per_group
from hwprune.prune.gating.convert import gates_to_mask
from hwprune.prune.gating.cost import GateCost
from hwprune.prune.gating.gates import GatedModel, gate_layout
from hwprune.prune.gating.objective import GatingObjective
from hwprune.prune.masks import ChannelMask
from hwprune.train.config import TrainConfig
from hwprune.train.loop import TrainResult


@dataclass
class GateResult:
    """A gating run: the trained gated model, its mask, and how pruning went.

    Attributes:
        gated: The gated model (``gated.net`` is the trained model, its weights unmasked).
        mask: The active gates as a ChannelMask (what compaction removes).
        config: The gating settings used.
        multipliers: The edge multiplier of each gated group (layout order).
        multiplier_source: ``config``, ``lut:<path>`` or ``none`` (all 1).
        train: The trainer's result (accuracy of the gated model in eval mode = the converted model).
        history: Per epoch: cost ratio, total-cost ratio, share of open channels, holding, steps.
        subdivision: Parts each batch was split into.
    """

    gated: GatedModel
    mask: ChannelMask
    config: GatingConfig
    multipliers: list[float]
    multiplier_source: str
    train: TrainResult
    history: list[dict]
    subdivision: int = 1

    def settings(self) -> dict:
        """The gating settings as a results row records them."""
        return {
            **self.config.to_json(),
            "edge_multipliers": self.multipliers,
            "multiplier_source": self.multiplier_source,
            "subdivision": self.subdivision,
            "gated_groups": [g.id for g in self.gated.layout.groups],
            "final": self.history[-1] if self.history else {},
        }


def resolve_multipliers(config: GatingConfig, graph, layout, lut: str | Path | None) -> tuple[list[float], str]:
    """The edge multipliers per gated group: from the config, from a LUT (latency), or all 1."""
    count = len(layout.groups)
    if lut is None:
        source = "config" if config.edge_multipliers is not None else "none"
        return per_group(config.edge_multipliers, count, "edge_multipliers", 1.0), source
    if config.edge_multipliers is not None:
        raise HwpruneError("give edge multipliers in the gating config or a LUT, not both (the LUT's replace them)")
    if config.factor_type != "flop_factor":
        raise HwpruneError(
            f"a LUT's latency multipliers scale FLOPs (GATOR's latency setting): use factor_type flop_factor, "
            f"not {config.factor_type}"
        )
    from hwprune.latency.lut import LUT
    from hwprune.prune.gating.multipliers import lut_multipliers

    return lut_multipliers(LUT.load(lut), graph, layout), f"lut:{lut}"


def prepare(
    model: nn.Module,
    example: torch.Tensor,
    config: GatingConfig,
    lut: str | Path | None = None,
    subdivision: int = 1,
    name: str | None = None,
) -> tuple[GatedModel, GatingObjective]:
    """Map ``model`` at ``example``, wrap it with gates and build the training objective."""
    if isinstance(subdivision, bool) or not isinstance(subdivision, int) or subdivision < 1:
        raise HwpruneError(f"subdivision must be a whole number >= 1, got {subdivision!r}")
    graph = build_channel_graph(model, example, name)
    layout = gate_layout(graph, config.round_to)
    multipliers, source = resolve_multipliers(config, graph, layout, lut)
    probs = per_group(config.gate_init_prob, len(layout.groups), "gate_init_prob", 0.995)
    gated = GatedModel(model, graph, layout, probs, config.temperature)
    cost = GateCost(graph, layout, config.factor_type, multipliers, source)
    return gated, GatingObjective(gated, cost, config, subdivision)


class ProgressLoader:
    """A training loader shown as a progress bar per epoch, with the cost ratio and open channels."""

    def __init__(self, loader, objective: GatingObjective, desc: str = "gating") -> None:
        self.loader = loader
        self.dataset = getattr(loader, "dataset", None)
        self.objective = objective
        self.desc = desc
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        self.epoch += 1
        bar = tqdm(self.loader, desc=f"{self.desc} epoch {self.epoch}", leave=False, unit="batch")
        for batch in bar:
            yield batch
            s = self.objective
            bar.set_postfix(cost=f"{s.ratio:.3f}", open=f"{s.open_share:.3f}", hold=s.holding, refresh=False)


def gate(
    model: nn.Module,
    train_loader,
    test_loader=None,
    *,
    config: GatingConfig | None = None,
    train_config: TrainConfig | None = None,
    lut: str | Path | None = None,
    subdivision: int = 1,
    example: torch.Tensor | None = None,
    progress: bool = True,
    name: str | None = None,
) -> GateResult:
    """Prune ``model``'s channels by training GATOR gates with a FLOPs, memory or latency cost term.

    Args:
        model: Any module the mapper reads (trained in place; its weights are never masked).
        train_loader: Batches of ``(images, labels)``.
        test_loader: Batches to evaluate on after each epoch (the gated model in eval mode, which
            computes what the converted model computes), or None.
        config: Gating settings (:class:`GatingConfig`; defaults: GATOR's flop_factor setting).
        train_config: Optimizer, schedule, device, checkpoints and logs (``TrainConfig()``).
        lut: An edge-profile LUT (``hwprune profile-edges``) whose latency model gives the edge
            multipliers.
        subdivision: Split each batch into this many parts and accumulate their gradients.
        example: Input to map the model with (default: one sample of ``train_loader``).
        progress: Show a progress bar.
        name: Model name for the graph and mask.

    Returns:
        A :class:`GateResult`; ``result.mask`` goes to ``export_pruned`` (or ``hwprune export --mask``).
    """
    from hwprune.train.loop import train

    config = config or GatingConfig()
    train_config = train_config or TrainConfig()
    if example is None:
        example = next(iter(train_loader))[0][:1]
    gated, objective = prepare(model.cpu(), example.cpu(), config, lut, subdivision, name)
    loader = ProgressLoader(train_loader, objective) if progress else train_loader
    result = train(gated, loader, test_loader, train_config, objective=objective)
    return finish(gated, objective, result)


def finish(gated: GatedModel, objective: GatingObjective, result: TrainResult) -> GateResult:
    """Convert the trained gates to a mask and bundle the run's facts."""
    gated.eval()
    mask = gates_to_mask(gated, {"method": "gator", "factor_type": objective.config.factor_type, **objective.state()})
    return GateResult(
        gated,
        mask,
        objective.config,
        objective.cost.multipliers.tolist(),
        objective.cost.multiplier_source,
        result,
        objective.history,
        objective.subdivision,
    )
