"""Accuracy against measured latency on trained models: hwprune's methods and its peers, side by side.

    python benchmarks/pareto.py [--models resnet18,mobilenet_v2] [--targets 0.3,0.5,0.7] [--seeds 0,1,2]
                                [--methods uniform,flops-aware,...,torch-pruning,modelopt]
                                [--phase search|finetune|all]

One dense model per architecture is trained on digits (at --image-size, cached). Each method then prunes
that model until its file, exported to ONNX at --export-size (batch 1), runs at the target fraction of the
dense file's onnxruntime latency (1 thread, interleaved, paired rounds); each method's own knob is moved by
the same secant search (``hwprune.workflow.closed_loop``), latency-aware excepted, which is ``hwprune.prune
--latency`` with its own loop. Every pruned file of a model is finally timed *in one interleaved run*
against the dense file: that run's ratios are the table's latency column. Then every pruned model gets the
same training budget per seed (BatchNorm statistics re-estimated on 512 examples, then --finetune-epochs
of SGD, cosine lr); prune-train spends its budget inside its rounds (one epoch per round), gating in its gate
training (later seeds reuse the first seed's searched knob).

Methods: ``uniform`` (every group loses the same share, L1, Torch-Pruning's default policy), ``flops-aware``
(the budget solver with the FLOPs cost, L1, each group's scores rescaled to sum to its FLOPs share: the
default), ``flops-aware-mean`` (the same, each group's scores rescaled to a mean of 1: the default until issue
13's study) and ``flops-aware-raw`` (scores compared unnormalised, i.e. global L1): the three normalisations of
the importance study; ``latency-aware`` (``hwprune.prune(latency=...)``: the solver on the measured edge
profile, L1, default normalisation; ``latency-aware-mean`` with the mean normalisation), ``prune-train`` (rounds
of prune + one epoch, reaching a FLOPs ratio over the rounds with the solver, BatchNorm re-estimated after each
compaction, cosine lr; the FLOPs ratio searched), ``gator-flops`` / ``gator-latency`` (GATOR gating from the
dense weights for the fine-tuning budget, its cost-term target searched; FLOPs cost, or FLOPs weighted by the edge
profile's latency multipliers), ``torch-pruning`` (Torch-Pruning's MetaPruner, global, Taylor
importance) and ``modelopt`` (NVIDIA ModelOpt's FastNAS under a FLOPs constraint, scored by accuracy on
training images); the peers are benchmark-only dependencies: benchmarks/requirements-peers.txt.
hwprune's methods keep channel counts in multiples of the backend's alignment (16 on ort-cpu).

The search phase times models: run it alone on a quiet machine (the table records other processes' load).
Writes benchmarks/results/pareto.csv (model,method,target_latency,measured_latency_ratio,flops_ratio,
params_ratio,top1_mean,top1_std,seeds,finetune_epochs), pareto.md (settings, every run) and pareto.png.
Work files (dense weights, pruned models, ONNX files, a journal from which a rerun resumes): out/pareto/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from journal import Journal, digits_loaders
from torch import nn

from hwprune.errors import HwpruneError, first_line
from hwprune.export.compact import compact_model
from hwprune.export.onnx_export import DEFAULT_EXPORTER
from hwprune.export.pipeline import export_verified
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.flops import count_flops
from hwprune.latency import measure
from hwprune.latency.backends import require_available
from hwprune.latency.measurement import paired_ratio
from hwprune.latency.profiler import profiled_groups
from hwprune.models import get_model
from hwprune.prune.budget import CostFn, solve
from hwprune.prune.channel import COUNTED_MIN_STEPS, uniform_channel_mask
from hwprune.prune.importance import CHANNEL_IMPORTANCES
from hwprune.prune.masks import ChannelMask
from hwprune.train import TrainConfig, evaluate, train
from hwprune.workflow.closed_loop import closed_loop
from hwprune.workflow.recovery import BN_SAMPLES, recalibrate_batchnorm

RESULTS = Path(__file__).parent / "results"
WORK = Path("out/pareto")
BACKEND = "ort-cpu"
COLUMNS = [
    "model", "method", "target_latency", "measured_latency_ratio", "flops_ratio", "params_ratio", "top1_mean",
    "top1_std", "seeds", "finetune_epochs",
]  # fmt: skip
METHODS = (
    "uniform", "flops-aware", "flops-aware-mean", "flops-aware-raw", "latency-aware", "latency-aware-mean",
    "prune-train", "gator-flops", "gator-latency", "torch-pruning", "modelopt",
)  # fmt: skip
TRAINED_IN_SEARCH = ("prune-train", "gator-flops", "gator-latency")  # their fine-tuning budget is spent searching
NORMALISED = {"flops-aware": "cost", "flops-aware-mean": "mean", "flops-aware-raw": "none"}  # importance study


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--targets", default="0.3,0.5,0.7", help="latency ratios of the dense ONNX file")
    p.add_argument("--seeds", default="0,1,2", help="fine-tuning seeds (and prune-train's rounds)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument(
        "--phase",
        choices=("search", "finetune", "all", "tables"),
        default="all",
        help="tables: only rewrite the tables from the journal (after runs of the phases with other settings)",
    )
    p.add_argument("--image-size", type=int, default=32, help="training and test input side (digits)")
    p.add_argument("--export-size", type=int, default=224, help="input side of every ONNX file timed")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds (more until 0.5 %% precision, 5x max)")
    p.add_argument("--tolerance", type=float, default=0.03, help="relative distance to the target accepted")
    p.add_argument("--dense-epochs", type=int, default=10)
    p.add_argument("--dense-lr", type=float, default=0.05)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--gate-lr", type=float, default=0.02, help="gator-*: lr of the gating run")
    p.add_argument("--gradient-multiplier", type=float, default=150.0, help="gator-*: GATOR's gradient_multiplier")
    return p.parse_args()


# ------------------------------------------------------------------ data, dense model, timing


def loaders(args, seed: int = 0):
    return digits_loaders(args.image_size, args.batch_size, seed)


def timing_example(args) -> torch.Tensor:
    return torch.randn(1, 3, args.export_size, args.export_size, generator=torch.Generator().manual_seed(0))


def dense_model(name: str, args, journal: Journal) -> nn.Module:
    """The dense model trained on digits (once per architecture), in eval mode."""
    path = WORK / f"{name}_dense.pt"
    model = get_model(name, num_classes=10, in_channels=3)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    torch.manual_seed(0)
    train_loader, test_loader = loaders(args)
    config = TrainConfig(epochs=args.dense_epochs, lr=args.dense_lr, batch_size=args.batch_size, seed=0)
    result = train(model, train_loader, test_loader, config)
    torch.save(model.state_dict(), path)
    journal.record(phase="dense", model=name, method="dense", top1=result.last_top1, seconds=result.seconds)
    return model.eval()


def dense_onnx(name: str, model: nn.Module, args) -> Path:
    """The dense model's ONNX file at the timing size: the denominator of every latency ratio."""
    path = WORK / f"{name}_dense.onnx"
    if not path.exists():
        export_verified(model, timing_example(args), path, DEFAULT_EXPORTER)
    return path


class LatencyJudge:
    """Times a pruned module, exported as it ships (ONNX), against the dense file, interleaved."""

    def __init__(self, dense: Path, args):
        self.dense, self.args = dense, args

    def ratio(self, module: nn.Module, path: Path) -> float:
        export_verified(module, timing_example(self.args), path, DEFAULT_EXPORTER)
        base, cand = measure(
            BACKEND, [self.dense, path], timing_example(self.args), threads=self.args.threads, repeats=self.args.repeats
        )
        return paired_ratio(base, cand)[0]


# ------------------------------------------------------------------ the methods


@dataclass
class Candidate:
    """One solution of a method at one knob setting, in the shape ``closed_loop`` reads."""

    model: nn.Module
    ratio: float  # the method's own figure at this knob (kept fraction, FLOPs ratio, ...)
    reachable: bool = True
    mask: ChannelMask | None = None  # on the dense model's graph; None for a peer's model
    architecture: dict | None = None  # ModelOpt's state (the searched widths), to rebuild its model


def stem(name: str, method: str, target: float, seed: int | None) -> str:
    """Work-file name of one pruned model (the methods that train while searching have one per seed)."""
    return f"{name}_{method}_t{target}" + (f"_s{seed}" if seed is not None else "")


def save_pruned(candidate: Candidate, stem_: str) -> None:
    """Tensors only (no pickled modules): the weights, and hwprune's mask (a peer's model is rebuilt by its knob)."""
    torch.save(candidate.model.state_dict(), WORK / f"{stem_}.pt")
    if candidate.mask is not None:
        candidate.mask.save(WORK / f"{stem_}.mask.json")
    if candidate.architecture is not None:
        torch.save(candidate.architecture, WORK / f"{stem_}.modelopt.pt")


def load_pruned(stem_: str, dense: nn.Module, args, knob: float | None) -> nn.Module:
    """The pruned model saved by :func:`save_pruned`, in eval mode.

    hwprune's models are the dense one compacted by the saved mask; ModelOpt's is rebuilt from its saved state;
    Torch-Pruning's is pruned again at its ``knob`` (deterministic: same weights, same batches), and loading the
    saved tensors checks every shape.
    """
    if (WORK / f"{stem_}.mask.json").exists():
        graph = build_channel_graph(dense, timing_example(args), "dense")
        model = compact_model(graph, ChannelMask.load(WORK / f"{stem_}.mask.json"))
    elif (WORK / f"{stem_}.modelopt.pt").exists():
        import modelopt.torch.opt as mto

        state = torch.load(WORK / f"{stem_}.modelopt.pt", weights_only=True)
        model = mto.restore_from_modelopt_state(copy.deepcopy(dense), state)
    else:
        model = torch_pruning_at(dense, args)(knob).model
    model.load_state_dict(torch.load(WORK / f"{stem_}.pt", weights_only=True))
    return model.eval()


def hwprune_masked(dense: nn.Module, args, solve_mask) -> Callable[[float], Candidate]:
    """A knob -> Candidate function for a mask-producing method of hwprune (L1 scores on the dense model)."""
    example = timing_example(args)
    graph = build_channel_graph(dense, example, "dense")
    scores = CHANNEL_IMPORTANCES.get("l1")(dense, graph, None)
    round_to = require_available(BACKEND).round_to

    def at(knob: float) -> Candidate:
        mask, ratio, reachable = solve_mask(graph, scores, knob, round_to)
        return Candidate(compact_model(graph, mask), ratio, reachable, mask)

    return at


def uniform_mask(graph, scores, kept: float, round_to: int):
    mask = uniform_channel_mask(graph, scores, 1.0 - kept, round_to=round_to)
    return mask, kept, kept > 0


def flops_mask(normalise: str):
    """The budget solver with the FLOPs cost, importance compared across groups as ``normalise`` says."""

    def masked(graph, scores, budget: float, round_to: int):
        groups = profiled_groups(graph, round_to, COUNTED_MIN_STEPS)  # as `prune --flops` aligns
        sol = solve(graph, groups, scores, CostFn.macs(graph), budget, round_to=round_to, normalise=normalise,
                    min_steps=COUNTED_MIN_STEPS)  # fmt: skip
        return sol.mask, sol.ratio, sol.reachable

    return masked


def torch_pruning_at(dense: nn.Module, args) -> Callable[[float], Candidate]:
    """Torch-Pruning's MetaPruner (global, Taylor on 512 training examples) at a kept fraction of channels."""
    try:
        import torch_pruning as tp
    except ImportError:
        raise HwpruneError("torch-pruning is not installed: pip install -r benchmarks/requirements-peers.txt") from None
    train_loader, _ = loaders(args)
    batches = [b for _, b in zip(range(BN_SAMPLES // args.batch_size), train_loader, strict=False)]

    def at(kept: float) -> Candidate:
        model = copy.deepcopy(dense).train()
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        pruner = tp.pruner.MetaPruner(
            model,
            torch.randn(1, 3, args.image_size, args.image_size),
            importance=tp.importance.TaylorImportance(),
            pruning_ratio=min(0.99, max(0.0, 1.0 - kept)),
            global_pruning=True,
            ignored_layers=[head],
        )
        model.zero_grad()
        for x, y in batches:
            nn.functional.cross_entropy(model(x), y).backward()
        pruner.step()
        model.zero_grad()
        return Candidate(model.eval(), kept, kept > 0)

    return at


def modelopt_at(name: str, dense: nn.Module, args) -> Callable[[float], Candidate]:
    """NVIDIA ModelOpt's FastNAS at a FLOPs constraint (a ratio of the dense FLOPs at the training size).

    BatchNorm calibration on 512 training examples, candidates scored by top-1 on 320 other training images;
    the search's pre-computed statistics are cached per model, so each new constraint costs seconds.
    """
    try:
        import modelopt.torch.opt as mto
        import modelopt.torch.prune as mtp
    except ImportError:
        raise HwpruneError("nvidia-modelopt is not installed: see benchmarks/requirements-peers.txt") from None
    train_loader, _ = loaders(args)
    batches = [b for _, b in zip(range(BN_SAMPLES // args.batch_size + 5), train_loader, strict=False)]
    calibration, scoring = batches[:-5], batches[-5:]

    def score(model: nn.Module) -> float:
        with torch.no_grad():
            hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in scoring)
        return hits / sum(len(y) for _, y in scoring)

    def at(flops: float) -> Candidate:
        torch.manual_seed(0)
        model, _ = mtp.prune(
            copy.deepcopy(dense),
            "fastnas",
            {"flops": f"{100.0 * min(1.0, max(0.01, flops)):.3f}%"},
            torch.randn(1, 3, args.image_size, args.image_size),
            config={
                "data_loader": calibration,
                "collect_func": lambda batch: batch[0],
                "score_func": score,
                "checkpoint": str(WORK / f"{name}_modelopt_search.pth"),
                "verbose": False,
            },
        )
        return Candidate(model.eval(), flops, True, architecture=mto.modelopt_state(model))

    return at


def searched(name: str, method: str, target: float, at, judge: LatencyJudge, args) -> tuple[Candidate, dict]:
    """The method's knob moved until its shipped file's measured latency ratio is within tolerance."""
    path = WORK / f"{name}_{method}_t{target}.onnx"
    sol, ratio, iterations = closed_loop(
        at, lambda c: judge.ratio(c.model, path), target, args.tolerance, max_iterations=6
    )
    knob = next(it["budget"] for it in iterations if it["measured"] == ratio)  # the best one's, not the last's
    return sol, {"knob": knob, "loop_ratio": ratio, "iterations": iterations}


def latency_aware(name: str, dense: nn.Module, target: float, args, normalise: str = "cost") -> tuple[Candidate, dict]:
    """``hwprune.prune(latency=target)``: edge profile (shared over targets), solver, its own closed loop."""
    import hwprune

    result = hwprune.prune(
        copy.deepcopy(dense),
        timing_example(args),
        latency=target,
        backend=BACKEND,
        importance="l1",
        lut=WORK / f"{name}_lut.json",
        threads=args.threads,
        repeats=args.repeats,
        tolerance=args.tolerance,
        out=WORK / f"{name}_latency-aware_{normalise}_t{target}",
        name=name,
        progress=False,
        normalise=normalise,
    )
    report = result.report
    info = {"loop_ratio": report.loop_ratio, "iterations": report.iterations, "status": report.status}
    return Candidate(result.model, report.measured_ratio, True, result.mask), info


def prune_train_at(name: str, dense: nn.Module, args, seed: int) -> Callable[[float], Candidate]:
    """Prune+train rounds (one epoch each, the fine-tuning budget) reaching a FLOPs ratio over the rounds.

    Each round: L1 scores, the budget solver (prune-train's defaults: importance normalised by FLOPs share, kept
    counts in multiples of 16) to the round's share of the FLOPs cut, compaction, BatchNorm re-estimated on 512
    examples, one epoch; the lr decays by one cosine over the rounds (as the others' fine-tuning).
    """
    from hwprune.workflow.prune_train import PruneTrainConfig, prune_train

    train_loader, test_loader = loaders(args, seed)

    def at(flops: float) -> Candidate:
        config = PruneTrainConfig(
            importance="l1",
            flops=min(1.0, max(0.01, flops)),
            n_rounds=args.finetune_epochs,
            epochs_per_round=1,
            lr=args.finetune_lr,
            lr_prune=args.finetune_lr,
            bn_samples=BN_SAMPLES,
            seed=seed,
        )
        result = prune_train(copy.deepcopy(dense), timing_example(args), train_loader, None, config, name=name)
        return Candidate(result.model.eval(), result.rounds[-1]["flops_ratio"], True, result.mask)

    return at


def edge_lut(name: str, dense: nn.Module, args) -> Path:
    """The edge profile at the timing size that latency-aware and gator-latency share (profiled once, journaled)."""
    import hwprune

    path = WORK / f"{name}_lut.json"
    if not path.exists():
        lut = hwprune.profile(dense, timing_example(args), backend=BACKEND, threads=args.threads,
                              repeats=args.repeats, journal=path.with_suffix(".journal.jsonl"), name=name,
                              progress=False)  # fmt: skip
        lut.save(path)
    return path


def gator_at(name: str, dense: nn.Module, args, method: str, seed: int) -> Callable[[float], Candidate]:
    """GATOR gating from the dense weights to a cost-term ratio, trained for the fine-tuning budget.

    ``--finetune-epochs`` epochs of gate training (the others' fine-tuning budget; the gated model in eval mode
    is the converted model, so no further training), one gate per 16 channels (ORT-CPU alignment);
    gator-flops weighs each group's FLOPs equally, gator-latency by the shared edge profile's multipliers.
    """
    from hwprune.prune.gating import GatingConfig, gate

    train_loader, _ = loaders(args, seed)
    lut = edge_lut(name, dense, args) if method == "gator-latency" else None

    def at(cost: float) -> Candidate:
        torch.manual_seed(seed)
        config = GatingConfig(
            gradient_multiplier=args.gradient_multiplier,
            target=min(1.0, max(0.01, cost)),
            round_to=require_available(BACKEND).round_to,
        )
        run = TrainConfig(epochs=args.finetune_epochs, lr=args.gate_lr, batch_size=args.batch_size, seed=seed)
        result = gate(copy.deepcopy(dense), train_loader, config=config, train_config=run, lut=lut, progress=False,
                      name=name)  # fmt: skip
        net = result.gated.net.eval()
        graph = build_channel_graph(net, timing_example(args), name)
        return Candidate(compact_model(graph, result.mask), result.history[-1]["cost_ratio"], True, result.mask)

    return at


# ------------------------------------------------------------------ phases


def search_phase(name: str, dense: nn.Module, methods: list[str], targets: list[float], seeds, args, journal) -> None:
    """Every (method, target): a pruned model at the target's measured latency, saved for the fine-tuning."""
    judge = LatencyJudge(dense_onnx(name, dense, args), args)
    done = {(r["model"], r["method"], r["target"], r.get("seed")) for r in journal if r["phase"] == "search"}
    first_knob = {
        (r["method"], r["target"]): r["knob"]
        for r in journal
        if r["phase"] == "search" and r["model"] == name and "knob" in r
    }
    for method in methods:
        for target in targets:
            for seed in seeds if method in TRAINED_IN_SEARCH else [None]:
                if (name, method, target, seed) in done:
                    continue
                start = time.perf_counter()
                try:
                    if method.startswith("latency-aware"):
                        normalise = "mean" if method == "latency-aware-mean" else "cost"
                        candidate, info = latency_aware(name, dense, target, args, normalise)
                    else:
                        at = {
                            "uniform": lambda: hwprune_masked(dense, args, uniform_mask),
                            **{
                                m: lambda n=n: hwprune_masked(dense, args, flops_mask(n)) for m, n in NORMALISED.items()
                            },
                            "torch-pruning": lambda: torch_pruning_at(dense, args),
                            "modelopt": lambda: modelopt_at(name, dense, args),
                            "prune-train": lambda s=seed: prune_train_at(name, dense, args, s),
                            **{m: lambda m=m, s=seed: gator_at(name, dense, args, m, s) for m in TRAINED_IN_SEARCH[1:]},
                        }[method]()
                        knob = first_knob.get((method, target))
                        if knob is None:
                            candidate, info = searched(name, method, target, at, judge, args)
                            first_knob[(method, target)] = info["knob"]
                        else:  # later seeds of a trained method reuse the first seed's knob; timed below
                            candidate, info = at(knob), {"knob": knob}
                except HwpruneError as exc:
                    journal.record(
                        phase="search", model=name, method=method, target=target, seed=seed, failed=first_line(exc)
                    )
                    continue
                save_pruned(candidate, stem(name, method, target, seed))
                journal.record(
                    phase="search",
                    model=name,
                    method=method,
                    target=target,
                    seed=seed,
                    seconds=time.perf_counter() - start,
                    **info,
                )


def side_by_side(name: str, dense: nn.Module, journal: Journal, args) -> None:
    """Every pruned model of ``name``, shipped as ONNX, timed against the dense file in one interleaved run."""
    rows = [r for r in journal if r["phase"] == "search" and r["model"] == name and "failed" not in r]
    files, models, example = [], [], timing_example(args)
    for r in rows:
        at = stem(name, r["method"], r["target"], r.get("seed"))
        models.append(load_pruned(at, dense, args, r.get("knob")))
        export_verified(models[-1], example, WORK / f"{at}_shipped.onnx", DEFAULT_EXPORTER)
        files.append(WORK / f"{at}_shipped.onnx")
    dense_file = dense_onnx(name, dense, args)
    timed = measure(BACKEND, [dense_file, *files], example, threads=args.threads, repeats=3 * args.repeats)
    stamp = time.time()  # a rerun's timing replaces this one in the table
    dense_flops = count_flops(dense, example)
    for r, model, m in zip(rows, models, timed[1:], strict=True):
        flops = count_flops(model, example)
        ratio, stderr = paired_ratio(timed[0], m)
        journal.record(
            phase="timed",
            stamp=stamp,
            model=name,
            method=r["method"],
            target=r["target"],
            seed=r.get("seed"),
            latency_ratio=ratio,
            latency_stderr=stderr,
            dense_ms=timed[0].median_ms,
            pruned_ms=m.median_ms,
            other_load=m.other_load,
            flops_ratio=flops.flops / dense_flops.flops,
            params_ratio=flops.params / dense_flops.params,
        )


def finetune_phase(name: str, dense: nn.Module, seeds: list[int], journal: Journal, args) -> None:
    """Each pruned model, per seed: BatchNorm re-estimated, ``finetune_epochs`` of SGD, test top-1."""
    done = {(r["model"], r["method"], r["target"], r["seed"]) for r in journal if r["phase"] == "finetune"}
    for r in [r for r in journal if r["phase"] == "search" and r["model"] == name and "failed" not in r]:
        for seed in seeds if r.get("seed") is None else [r["seed"]]:
            if (name, r["method"], r["target"], seed) in done:
                continue
            model = load_pruned(stem(name, r["method"], r["target"], r.get("seed")), dense, args, r.get("knob"))
            train_loader, test_loader = loaders(args, seed)
            if r["method"] in TRAINED_IN_SEARCH:  # trained while searching already: the same number of epochs
                journal.record(
                    phase="finetune",
                    model=name,
                    method=r["method"],
                    target=r["target"],
                    seed=seed,
                    top1_after_bn=None,
                    top1=evaluate(model, test_loader, "cpu").top1,
                )
                continue
            torch.manual_seed(seed)
            recalibrate_batchnorm(model, train_loader, BN_SAMPLES)
            after_bn = evaluate(model, test_loader, "cpu").top1
            config = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.batch_size,
                                 seed=seed)  # fmt: skip
            result = train(model, train_loader, test_loader, config)
            journal.record(
                phase="finetune",
                model=name,
                method=r["method"],
                target=r["target"],
                seed=seed,
                top1_after_bn=after_bn,
                top1=result.last_top1,
            )


# ------------------------------------------------------------------ journal and tables


def table(journal: Journal, args) -> pd.DataFrame:
    runs = pd.DataFrame([r for r in journal if r["phase"] in ("timed", "finetune")])
    rows = []
    if runs.empty or not (runs.phase == "timed").any():  # fine-tuned before the side-by-side timing: no rows yet
        return pd.DataFrame(columns=COLUMNS)
    timed, tuned = runs[runs.phase == "timed"], runs[runs.phase == "finetune"]
    timed = timed[timed.stamp == timed.groupby("model").stamp.transform("max")]  # each model's latest timing run
    for (model, method, target), g in tuned.groupby(["model", "method", "target"], sort=False):
        t = timed[(timed.model == model) & (timed.method == method) & (timed.target == target)]
        if t.empty:
            continue
        top1 = g["top1"].tolist()
        rows.append({
            "model": model, "method": method, "target_latency": target,
            "measured_latency_ratio": t["latency_ratio"].mean(), "flops_ratio": t["flops_ratio"].mean(),
            "params_ratio": t["params_ratio"].mean(), "top1_mean": statistics.mean(top1),
            "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0, "seeds": len(top1),
            "finetune_epochs": args.finetune_epochs,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS).round(4)


def winners(frame: pd.DataFrame) -> str:
    """Per model and target: the most accurate method, and each method's distance to it (points of top-1)."""
    lines = ["| model | target | best | top-1 | " + " | ".join(f"{m}" for m in METHODS) + " |"]
    lines.append("|---|---:|---|---:|" + "---:|" * len(METHODS))
    for (model, target), g in frame.groupby(["model", "target_latency"], sort=False):
        best = g.loc[g.top1_mean.idxmax()]
        gaps = {r.method: 100 * (r.top1_mean - best.top1_mean) for r in g.itertuples()}
        cells = [f"{gaps[m]:+.2f}" if m in gaps else "" for m in METHODS]
        lines.append(f"| {model} | {target} | {best.method} | {100 * best.top1_mean:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(frame: pd.DataFrame, dense_top1: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(frame.model))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        for method, g in frame[frame.model == model].groupby("method", sort=False):
            g = g.sort_values("measured_latency_ratio")
            ax.errorbar(g.measured_latency_ratio, g.top1_mean, yerr=g.top1_std, marker="o", capsize=3, label=method)
        if model in dense_top1:
            ax.axhline(dense_top1[model], color="grey", linestyle="--", linewidth=1, label="dense")
        ax.set(title=model, xlabel="measured latency ratio (ONNX Runtime CPU)", ylabel="top-1 on digits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "pareto.png", dpi=120)
    plt.close(fig)


def write(journal: Journal, args) -> None:
    frame = table(journal, args)
    earlier = RESULTS / "pareto.csv"
    kept_models: list[str] = []
    if earlier.exists():  # a run on some models replaces their rows and keeps the other models' rows
        old = pd.read_csv(earlier)
        old = old[~old.model.isin(frame.model)]
        kept_models = list(dict.fromkeys(old.model))
        frame = pd.concat([old, frame], ignore_index=True) if not frame.empty else old
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS / "pareto.csv", index=False)
    dense_top1 = {r["model"]: r["top1"] for r in journal if r["phase"] == "dense"}
    if not frame.empty:
        plot(frame, dense_top1)
    runs = pd.DataFrame([r for r in journal if r["phase"] in ("timed", "finetune")]).round(4)
    search = pd.DataFrame([{k: v for k, v in r.items() if k != "iterations"} for r in journal
                           if r["phase"] == "search"]).round(4)  # fmt: skip
    runs_of = [r for r in journal if r["phase"] == "command"] or [{"command": invocation(), "settings": vars(args)}]
    commands = "\n".join(f"- `{r['command']}` (settings: {json.dumps(r['settings'])})" for r in runs_of)
    note = (
        "# Accuracy against measured latency on trained models (digits, ONNX Runtime CPU)\n\n"
        f"Commands (in order; the journal out/pareto/journal.jsonl resumes, `--phase tables` rewrites these files):\n"
        f"{commands}\n\n"
        f"Dense models trained on digits at {args.image_size} px ({args.dense_epochs} epochs, top-1: "
        f"{json.dumps({k: round(v, 4) for k, v in dense_top1.items()})}). Latency: ONNX files exported at "
        f"{args.export_size} px, batch 1, {args.threads} onnxruntime thread(s); every pruned file of a model timed "
        "against the dense file in one interleaved run (paired rounds). flops_ratio / params_ratio: fvcore counts "
        "of the pruned over the dense model at the timing size. top1: digits test split (360 images) after "
        f"BatchNorm re-estimation and {args.finetune_epochs} epochs of fine-tuning (prune-train: its rounds, one "
        f"epoch each; gator-*: {args.finetune_epochs} epochs of gate training, lr {args.gate_lr}, gradient multiplier "
        f"{args.gradient_multiplier}), mean and std over seeds.\n"
    )
    if kept_models:
        note += (
            f"\nRows of {', '.join(kept_models)}: kept from the file's earlier run (the journal below holds only this "
            "run; the earlier run's commands, every run and search are in git history of this file).\n"
        )
    (RESULTS / "pareto.md").write_text(
        f"{note}\n{frame.to_markdown(index=False)}\n\n## Best method per target (points of top-1 behind it)\n\n"
        f"{winners(frame)}\n\n## Every run\n\n{runs.to_markdown(index=False)}\n\n"
        f"## Search (knob moved until the measured latency matched)\n\n{search.to_markdown(index=False)}\n"
    )
    print(frame.to_markdown(index=False), flush=True)


def invocation() -> str:
    threads = os.environ.get("OMP_NUM_THREADS")
    return (f"OMP_NUM_THREADS={threads} " if threads else "") + " ".join(["python", *sys.argv]).strip()


def main() -> None:
    args = arguments()
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    journal = Journal(WORK / "journal.jsonl")
    if args.phase != "tables":
        journal.record(phase="command", command=invocation(), settings=vars(args))
    methods = args.methods.split(",")
    targets = [float(t) for t in args.targets.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.models.split(","):
        if args.phase == "tables":
            break
        dense = dense_model(name, args, journal)
        if args.phase in ("search", "all"):
            search_phase(name, dense, methods, targets, seeds, args, journal)
            side_by_side(name, dense, journal, args)
        if args.phase in ("finetune", "all"):
            finetune_phase(name, dense, seeds, journal, args)
        write(journal, args)
    if args.phase == "tables":
        write(journal, args)


if __name__ == "__main__":
    main()
