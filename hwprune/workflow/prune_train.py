"""Prune+train rounds (the gradient-flow framework's ``main.py``): prune a little, train, repeat.

Pruning is spread over ``n_rounds``: before each round the channel importances are measured (on
``imp_samples`` examples, or tracked as an exponential average over ``track_batches`` mini-batches), the
least important channels over all prunable groups are removed until the round's cumulative threshold of
the *original* channels is gone, the model is physically compacted (so training gets faster as it goes),
its BatchNorm statistics are re-estimated on ``bn_samples`` training examples (the removed channels shifted
every later layer's input), and it trains ``epochs_per_round`` epochs at ``lr_prune`` (``schedule`` cosine:
decaying to 0 over all pruning epochs, and from ``lr`` over the final epochs; constant: the seed's fixed
rates). With ``flops`` the rounds reach a FLOPs budget instead of a channel percent: round r keeps
``flops ** ((r + 1) / n_rounds)`` of the dense MACs (each round removes the same fraction of what is left),
chosen by the budget solver (least importance per MAC saved), in widths aligned to ``round_to``.
``distill`` > 0 adds the soft-target loss against the dense model to every epoch. The SGD
momentum of kept channels is carried through compaction with ``preserve_momentum`` (sliced exactly as the
weights are). Each round ends with a
checkpoint (weights, optimizer state, the cumulative mask on the original model, the statistics), from
which an interrupted run resumes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.export.compact import compact_model, shrink_like_parameters
from hwprune.graph_mapper import ChannelGraph, build_channel_graph
from hwprune.graph_mapper.cost import CostModel, kept_shares
from hwprune.prune.budget import NORMALISATIONS, CostFn, solve
from hwprune.prune.channel import COUNTED_MIN_STEPS, unit_of
from hwprune.prune.importance import CHANNEL_IMPORTANCES
from hwprune.prune.masks import ChannelMask
from hwprune.train.distill import Distillation
from hwprune.workflow.recovery import BN_SAMPLES, recalibrate_batchnorm
from hwprune.workflow.scoring import IMPORTANCE_SAMPLES, first_samples

CHECKPOINT = "prune_train_state"


@dataclass
class PruneTrainConfig:
    """The seed's options, with its names and defaults (``--pruning-type`` is ``importance``)."""

    importance: str = "mag_based"
    prune_percent: float = 75.0  # of the original prunable channels, removed by the last round
    n_rounds: int = 25
    thresholds: list[float] | None = None  # cumulative percent per round (default: evenly spaced)
    warmup_epochs: int = 0
    epochs_per_round: int = 1
    final_epochs: int = 0
    lr: float = 0.1
    lr_prune: float = 0.1
    moment: float = 0.9
    weight_decay: float = 5e-4
    preserve_moment: bool = False
    track_batches: int = 0  # 0: importance on imp_samples; N: exponential average over N mini-batches
    alpha: float = 0.8
    imp_samples: int = IMPORTANCE_SAMPLES
    grasp_T: float = 200.0
    T: float = 1.0  # training temperature (logits / T)
    seed: int = 0
    schedule: str = "cosine"  # or "constant" (the seed: lr_prune in the rounds, lr in the final epochs)
    bn_samples: int = BN_SAMPLES  # BatchNorm re-estimated after each compaction (0: statistics kept)
    flops: float | None = None  # a FLOPs budget (ratio of the dense MACs) reached over the rounds
    normalise: str = NORMALISATIONS[0]  # how the budget solver compares importance across groups (with flops)
    round_to: int = 16  # with flops: kept counts in multiples of this (ORT CPU's alignment), halved for small groups
    distill: float = 0.0  # weight of the soft-target loss against the dense model
    distill_temperature: float = 4.0

    def round_thresholds(self) -> list[float]:
        """Cumulative percent of the original prunable channels removed after each round."""
        if self.thresholds is not None:
            return [float(t) for t in self.thresholds]
        return [self.prune_percent * (r + 1) / self.n_rounds for r in range(self.n_rounds)]

    def validate(self) -> None:
        CHANNEL_IMPORTANCES.get(self.importance)  # unknown names: one line with suggestions
        if not 0 <= self.prune_percent < 100:
            raise HwpruneError(f"--prune-percent is in [0, 100) (got {self.prune_percent})")
        if self.n_rounds < 1 or self.epochs_per_round < 0 or self.warmup_epochs < 0 or self.final_epochs < 0:
            raise HwpruneError("--n-rounds is at least 1 and every epoch count at least 0")
        t = self.round_thresholds()
        if self.thresholds is not None and (
            len(t) != self.n_rounds or any(b < a for a, b in zip(t, t[1:], strict=False)) or not 0 <= t[0]
        ):
            raise HwpruneError(
                f"--thresholds are {self.n_rounds} cumulative percents, non-decreasing, in [0, 100) (got {t})"
            )
        if t and t[-1] >= 100:
            raise HwpruneError(f"--thresholds stay below 100 % (got {t[-1]})")
        if not 0 <= self.alpha < 1 or self.track_batches < 0:
            raise HwpruneError("--alpha is in [0, 1) and --track-batches at least 0")
        if self.schedule not in ("cosine", "constant"):
            raise HwpruneError(f"--schedule is cosine or constant (got {self.schedule!r})")
        if self.bn_samples < 0:
            raise HwpruneError(f"--bn-samples is at least 0 (got {self.bn_samples})")
        if self.flops is not None and not 0 < self.flops <= 1:
            raise HwpruneError(f"--flops is a ratio of the dense model's FLOPs in (0, 1] (got {self.flops})")
        if self.flops is not None and self.thresholds is not None:
            raise HwpruneError(
                "--thresholds are channel percents: with --flops each round cuts the same share of the FLOPs left"
            )
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise HwpruneError(f"--round-to is a whole number >= 1 (got {self.round_to!r})")
        if self.normalise not in NORMALISATIONS:
            raise HwpruneError(f"--normalise is one of {', '.join(NORMALISATIONS)} (got {self.normalise!r})")
        if not self.distill >= 0 or not self.distill_temperature > 0:
            raise HwpruneError("--distill is a weight >= 0 and --distill-temperature a temperature > 0")

    def round_flops(self, r: int) -> float:
        """With ``flops``: the ratio of the dense MACs kept after round ``r``, a geometric schedule.

        Each round removes the same fraction of the FLOPs left: an even split of the cut (1 - k(1 - flops)/n)
        made the last round remove most of what remained (0.47 -> 0.20 on mobilenet_v2 at flops 0.2), at
        the lowest learning rate; geometric rounds kept 88 % top-1 there against 81 % (seed 0, digits).
        """
        return self.flops ** ((r + 1) / self.n_rounds)

    def lr_at(self, phase: str, epoch: int, epochs: int) -> float:
        """The lr of ``epoch`` of a phase's ``epochs`` (pruning: all rounds' epochs counted together)."""
        lr = self.lr_prune if phase == "pruning" else self.lr
        if self.schedule == "constant" or phase == "warmup":
            return lr
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, epochs)))


@dataclass
class PruneTrainResult:
    """The pruned, trained model and how it got there (accuracy per phase, channels per round)."""

    model: nn.Module
    mask: ChannelMask  # cumulative, on the original model's graph
    config: PruneTrainConfig = field(default_factory=PruneTrainConfig)
    stats: dict = field(default_factory=dict)  # phase -> list of {"epoch", "train_top1", "test_top1", ...}
    rounds: list[dict] = field(default_factory=list)  # per round: threshold, kept channels, params

    top1_dense: float | None = None  # the dense model's test top-1 (None without test data)
    onnx_path: Path | None = None
    onnx_max_rel_diff: float | None = None
    params_before: int = 0

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def final_top1(self) -> float | None:
        """Test top-1 after the last epoch that measured it (None without test data)."""
        for phase in ("final", "pruning", "warmup"):
            if self.stats.get(phase) and self.stats[phase][-1]["test_top1"] is not None:
                return self.stats[phase][-1]["test_top1"]
        return None

    def table(self, every_epoch: bool = False) -> str:
        lines = ["## prune+train rounds", ""]
        lines.append("| round | cumulative % removed | channels kept | params | FLOPs ratio | test top-1 after BN |")
        lines.append("|---:|---:|---:|---:|---:|---:|")
        for r in self.rounds:
            after_bn = "" if r.get("test_top1_after_bn") is None else f"{r['test_top1_after_bn']:.4f}"
            lines.append(
                f"| {r['round']} | {r['threshold']:.1f} | {r['kept_channels']} / {r['of']} | {r['params']:,} "
                f"| {r.get('flops_ratio', float('nan')):.3f} | {after_bn} |"
            )
        shown = {k: (v if every_epoch else v[-1:]) for k, v in self.stats.items() if v}
        if shown:
            lines += [
                "",
                "| phase | round | epoch | loss | train top-1 | test top-1 |",
                "|---|---:|---:|---:|---:|---:|",
            ]
        for phase, records in shown.items():
            for e in records:
                test = "" if e["test_top1"] is None else f"{e['test_top1']:.4f}"
                cells = [phase, e.get("round", ""), e["epoch"], f"{e['loss']:.4f}", f"{e['train_top1']:.4f}", test]
                lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        if self.params_before:
            ratio = self.params / self.params_before
            lines.append(f"\nParams {self.params_before:,} -> {self.params:,} ({ratio:.3f}).")
        if self.onnx_path is not None:
            diff = self.onnx_max_rel_diff
            lines.append(f"ONNX of the pruned model (matches it in onnxruntime within {diff:.1e}): {self.onnx_path}")
        return "\n".join(lines)


def tracked_importance(
    model: nn.Module, graph: ChannelGraph, batches, name: str, alpha: float, **opts
) -> dict[int, np.ndarray]:
    """Importance as an exponential average over mini-batches: ``s = alpha s + (1 - alpha) s_b``, from ``s_0``."""
    scorer = CHANNEL_IMPORTANCES.get(name)
    ema: dict[int, np.ndarray] | None = None
    for batch in batches:
        scores = scorer(model, graph, [batch], **opts) if scorer.needs_data else scorer(model, graph, None, **opts)
        ema = scores if ema is None else {g: alpha * ema[g] + (1 - alpha) * s for g, s in scores.items()}
    if ema is None:
        raise HwpruneError("importance tracking needs at least one training batch")
    return ema


def global_mask(graph: ChannelGraph, scores: dict[int, np.ndarray], keep_total: int) -> ChannelMask:
    """Keep the ``keep_total`` highest-scoring channels over all prunable exact groups (at least one unit each).

    Scores are compared across groups after dividing each group's by its mean, as the budget solver does, so a
    layer's scale (a BatchNorm, a wide fan-in) does not decide alone which layers empty first.
    """
    mask = ChannelMask.full(graph)
    groups = [g for g in graph.prunable_groups if g.exact and g.size >= 2 and g.id in scores]
    fixed = sum(g.size for g in graph.prunable_groups) - sum(g.size for g in groups)
    units = {g.id: unit_of(g) for g in groups}
    floor = sum(units.values())
    budget = max(floor, keep_total - fixed)
    normed = {g.id: scores[g.id] / (np.mean(np.abs(scores[g.id])) or 1.0) for g in groups}
    # every group keeps its best unit; the rest of the budget goes to the best remaining channels anywhere
    ranked = []
    for g in groups:
        order = np.argsort(-normed[g.id], kind="stable")
        mask.keep[g.id] = np.zeros(g.size, dtype=bool)
        mask.keep[g.id][order[: units[g.id]]] = True
        ranked += [(float(normed[g.id][i]), g.id, int(i)) for i in order[units[g.id] :]]
    ranked.sort(key=lambda t: -t[0])
    for _, gid, i in ranked[: budget - floor]:
        mask.keep[gid][i] = True
    return mask


def flops_round_mask(
    graph: ChannelGraph, scores: dict[int, np.ndarray], keep_macs: float, normalise: str, steps: dict[int, int]
) -> ChannelMask:
    """The budget solver's mask keeping ``keep_macs`` multiply-adds of ``graph`` (least importance per MAC first).

    ``steps``: each group's step of kept channels, fixed on the original model (``round_to``, halved for small
    groups as FLOPs budgets in ``prune``) so that widths stay aligned round after round: unaligned widths made
    the rounds' models slower on ONNX Runtime than FLOPs say (a latency target needed 3 % of the FLOPs).
    """
    cost = CostFn.macs(graph)
    stepped = [dataclasses.replace(g, round_to=steps[g.id]) for g in graph.prunable_groups if g.id in scores]
    groups = [g for g in stepped if g.exact and unit_of(g) < g.size]
    ratio = min(1.0, max(keep_macs / (cost.total({}) or 1.0), 1e-6))
    return solve(graph, groups, scores, cost, ratio, normalise=normalise).mask


def _optimizer(model: nn.Module, lr: float, cfg: PruneTrainConfig) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.moment, weight_decay=cfg.weight_decay)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _train_epoch(model, optimizer, loader, T: float, teacher: nn.Module | None, cfg) -> tuple[float, float]:
    """One epoch of SGD on cross-entropy of logits / T (+ distillation); returns (mean loss, train top-1)."""
    model.train()
    loss_sum = hits = n = 0.0
    distill = Distillation(model, teacher, cfg.distill, cfg.distill_temperature) if teacher is not None else None
    with distill or contextlib.nullcontext():
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            out = model(x)
            loss = F.cross_entropy(out / T, y)
            if distill is not None:
                loss = loss + distill.extra_loss()
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(y)
            hits += int((out.argmax(1) == y).sum())
            n += len(y)
    return loss_sum / max(n, 1), hits / max(n, 1)


def _epoch(record: list, model, optimizer, train_loader, test_loader, cfg, teacher=None, **tags) -> None:
    """Train one epoch and append its figures (loss, lr, train and test top-1) to ``record``."""
    lr = optimizer.param_groups[0]["lr"]
    loss, top1 = _train_epoch(model, optimizer, train_loader, cfg.T, teacher, cfg)
    record.append({**tags, "lr": lr, "loss": loss, "train_top1": top1, "test_top1": _test_top1(model, test_loader)})


def _test_top1(model, loader) -> float | None:
    if loader is None:
        return None
    from hwprune.train import evaluate

    return evaluate(model, loader, "cpu").top1


def compact_with_momentum(
    model: nn.Module, graph: ChannelGraph, mask: ChannelMask, optimizer, lr: float, cfg: PruneTrainConfig
):
    """The compacted model and a fresh SGD for it.

    With ``preserve_moment`` the new momentum buffers are the old ones sliced exactly as the weights were
    (kept channels keep their momentum, value for value).
    """
    names = {id(p): n for n, p in graph.gm.named_parameters()}
    momenta = {}
    if cfg.preserve_moment:
        for p in model.parameters():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None and id(p) in names:
                momenta[names[id(p)]] = buf
    small = compact_model(graph, mask)
    new_opt = _optimizer(small, lr, cfg)
    if momenta:
        sliced = shrink_like_parameters(graph, mask, momenta)
        params = dict(small.named_parameters())
        for name, buf in sliced.items():
            new_opt.state[params[name]]["momentum_buffer"] = buf.clone()
    return small, new_opt


def _compose(original: ChannelGraph, kept_idx: dict[int, np.ndarray]) -> ChannelMask:
    mask = ChannelMask.full(original)
    for gid, idx in kept_idx.items():
        mask.keep[gid] = np.isin(np.arange(original.group(gid).size), idx)
    return mask


def _group_key(group) -> tuple:
    """A group's identity across compactions: the tensors and axes it spans (names survive compaction)."""
    return tuple(sorted((s.tensor, s.axis) for s in group.slices))


def _save(out: Path, model, optimizer, mask: ChannelMask, state: dict) -> None:
    from hwprune.train import save_checkpoint

    save_checkpoint(model, out / CHECKPOINT, {"prune_train": state})
    tmp = out / f".{CHECKPOINT}.optim.pt.tmp"
    torch.save(optimizer.state_dict(), tmp)
    tmp.replace(out / f"{CHECKPOINT}.optim.pt")
    mask.save(out / f"{CHECKPOINT}.mask.json")


def prune_train(
    model: nn.Module,
    example: torch.Tensor,
    train_loader,
    test_loader=None,
    config: PruneTrainConfig | None = None,
    out: str | Path | None = None,
    name: str = "model",
    on_round: Callable[[int, nn.Module], None] | None = None,
) -> PruneTrainResult:
    """Run warm-up, ``n_rounds`` of prune+compact+train, and final training; resume from ``out`` if a run stopped.

    ``model`` is not modified (a compacted copy is trained). ``on_round(r, model)`` is called after each
    round's checkpoint (tests use it to stop a run).
    """
    cfg = config or PruneTrainConfig()
    cfg.validate()
    torch.manual_seed(cfg.seed)
    out = Path(out) if out is not None else None
    original = build_channel_graph(model, example, name)
    total = sum(g.size for g in original.prunable_groups)
    full = ChannelMask.full(original)
    current = compact_model(original, full)  # a trainable copy; the user's module stays as it was
    top1_dense = _test_top1(current, test_loader)
    optimizer = _optimizer(current, cfg.lr, cfg)
    kept_idx = {g.id: np.arange(g.size) for g in original.prunable_groups}
    stats: dict[str, list] = {"warmup": [], "pruning": [], "final": []}
    rounds: list[dict] = []
    start_round = 0
    if out is not None and (out / f"{CHECKPOINT}.safetensors").exists():
        current, optimizer, kept_idx, stats, rounds, start_round = _resume(out, original, cfg)
    elif out is not None:
        out.mkdir(parents=True, exist_ok=True)

    teacher = copy.deepcopy(model) if cfg.distill else None  # the dense model's soft targets
    if start_round == 0 and not stats["warmup"]:
        _set_lr(optimizer, cfg.lr)
        for epoch in range(cfg.warmup_epochs):
            _epoch(stats["warmup"], current, optimizer, train_loader, test_loader, cfg, teacher, epoch=epoch)

    by_key = {_group_key(g): g.id for g in original.groups}
    thresholds = cfg.round_thresholds()
    dense_macs = CostModel(original).total_macs
    pruning_epochs = cfg.n_rounds * cfg.epochs_per_round
    for r in range(start_round, cfg.n_rounds):
        graph = build_channel_graph(current, example, name)
        costs = CostModel(graph)
        opts = {"T": cfg.grasp_T} if cfg.importance in ("grasp", "grad_preserve") else {}
        if cfg.track_batches:
            batches = [b for _, b in zip(range(cfg.track_batches), train_loader, strict=False)]
            scores = tracked_importance(current, graph, batches, cfg.importance, cfg.alpha, **opts)
        else:
            scorer = CHANNEL_IMPORTANCES.get(cfg.importance)
            data = first_samples(train_loader, cfg.imp_samples) if scorer.needs_data else None
            scores = scorer(current, graph, data, **opts)
        if cfg.flops is not None:
            steps = {
                g.id: unit_of(original.group(by_key[_group_key(g)]), cfg.round_to, COUNTED_MIN_STEPS)
                for g in graph.prunable_groups
            }
            mask = flops_round_mask(graph, scores, cfg.round_flops(r) * dense_macs, cfg.normalise, steps)
        else:
            mask = global_mask(graph, scores, int(round(total * (1 - thresholds[r] / 100))))
        for g in graph.prunable_groups:  # compose with what earlier rounds removed, in original indices
            gid = by_key[_group_key(g)]
            kept_idx[gid] = kept_idx[gid][mask.keep.get(g.id, np.ones(g.size, dtype=bool))]
        current, optimizer = compact_with_momentum(current, graph, mask, optimizer, cfg.lr_prune, cfg)
        recalibrate_batchnorm(current, train_loader, cfg.bn_samples)
        after_bn = _test_top1(current, test_loader)
        for epoch in range(cfg.epochs_per_round):
            _set_lr(optimizer, cfg.lr_at("pruning", r * cfg.epochs_per_round + epoch, pruning_epochs))
            _epoch(stats["pruning"], current, optimizer, train_loader, test_loader, cfg, teacher, round=r, epoch=epoch)
        kept = int(sum(len(i) for i in kept_idx.values()))
        rounds.append(
            {
                "round": r,
                "threshold": thresholds[r] if cfg.flops is None else 100.0 * (1 - kept / total),
                "kept_channels": kept,
                "of": total,
                "params": sum(p.numel() for p in current.parameters()),
                "flops_ratio": costs.cost(kept_shares(graph, mask))[0] / dense_macs,
                "test_top1_after_bn": after_bn,
            }
        )
        if out is not None:
            state = {"round": r, "stats": stats, "rounds": rounds, "config": asdict(cfg)}
            _save(out, current, optimizer, _compose(original, kept_idx), state)
        if on_round is not None:
            on_round(r, current)

    for epoch in range(cfg.final_epochs):
        _set_lr(optimizer, cfg.lr_at("final", epoch, cfg.final_epochs))
        _epoch(stats["final"], current, optimizer, train_loader, test_loader, cfg, teacher, epoch=epoch)
    current.eval()
    return PruneTrainResult(current, _compose(original, kept_idx), cfg, stats, rounds, top1_dense)


def _resume(out: Path, original: ChannelGraph, cfg: PruneTrainConfig):
    """Rebuild the compacted model of the last finished round from its checkpoint (weights, momentum, mask)."""
    from hwprune.train import load_checkpoint, read_sidecar

    mask = ChannelMask.load(out / f"{CHECKPOINT}.mask.json")
    state = read_sidecar(out / CHECKPOINT)["prune_train"]
    if state["config"] != asdict(cfg):
        raise HwpruneError(f"{out} holds a prune-train run with other settings: rerun them, or choose another --out")
    current = compact_model(original, mask)
    load_checkpoint(current, out / CHECKPOINT)
    optimizer = _optimizer(current, cfg.lr_prune, cfg)
    optimizer.load_state_dict(torch.load(out / f"{CHECKPOINT}.optim.pt", weights_only=True))
    kept_idx = {g.id: np.flatnonzero(mask.keep.get(g.id, np.ones(g.size, bool))) for g in original.prunable_groups}
    return current, optimizer, kept_idx, state["stats"], state["rounds"], state["round"] + 1


def _flops_status(result: PruneTrainResult) -> str:
    """With a FLOPs budget: met when the last round's conv/linear MACs are within it (the solver's cap)."""
    if result.config.flops is None or not result.rounds:
        return ""
    return "met" if result.rounds[-1]["flops_ratio"] <= result.config.flops + 1e-9 else "missed"


def ship_prune_train(
    result: PruneTrainResult,
    dense: nn.Module,
    example: torch.Tensor,
    out: Path | None,
    name: str,
    results: Path | None = None,
    dataset: str = "custom",
) -> PruneTrainResult:
    """Export the pruned model as verified ONNX into ``out`` and append its results row (accuracy, size)."""
    from hwprune.export.onnx_export import DEFAULT_EXPORTER
    from hwprune.export.pipeline import export_verified
    from hwprune.graph_mapper.flops import count_flops
    from hwprune.results import ResultsStore, RunRecord, current_git_sha

    result.params_before = sum(p.numel() for p in dense.parameters())
    if out is not None:
        path = Path(out) / f"{name.split(':')[-1]}_pruned.onnx"
        _, result.onnx_max_rel_diff = export_verified(result.model, example, path, DEFAULT_EXPORTER)
        result.onnx_path = path
    if results is not None:
        before, after = count_flops(dense, example), count_flops(result.model, example)
        kept = result.rounds[-1]["kept_channels"] / result.rounds[-1]["of"] if result.rounds else 1.0
        ResultsStore(results).append(
            RunRecord(
                git_sha=current_git_sha(),
                model=name,
                dataset=dataset,
                method=f"prune-train:{result.config.importance}",
                mask_kind="channel",
                target_kind="density" if result.config.flops is None else "flops",
                target_value=1 - result.config.prune_percent / 100
                if result.config.flops is None
                else result.config.flops,
                density=kept,
                density_whole_model=after.params / before.params,
                params=after.params,
                params_before=before.params,
                flops=after.flops,
                flops_before=before.flops,
                flops_counter=after.counter,
                accuracy_top1=result.final_top1(),
                artifacts=json.dumps({"onnx": str(result.onnx_path)} if result.onnx_path else {}),
                extra=json.dumps(
                    {
                        "rounds": result.rounds,
                        "stats": result.stats,
                        "config": asdict(result.config),
                        "top1_dense": result.top1_dense,
                        "status": _flops_status(result),
                    }
                ),
            )
        )
    return result
