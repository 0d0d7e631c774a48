"""GATOR gating on digits: gator-flops vs gator-latency, top-1 against latency measured on ONNX Runtime CPU.

    python benchmarks/gating.py [--models resnet18,mobilenet_v2] [--seeds 0,1] [--targets 0.5,0.3]
                                [--image-size 32] [--export-size 128] [--threads 1]

Per model: an edge profile (LUT) on ort-cpu at --export-size, batch 1; its latency model gives
gator-latency's edge multipliers. Per model and seed: a dense model trained on digits at --image-size
(shared by every gating run of that seed), then per method and target a gating run from its weights
(same settings for both methods, one gate per --round-to channels; only the multipliers differ),
converted, compacted with proof, exported to a verified ONNX file and timed against the dense model
(interleaved, --threads threads, batch 1, at --export-size) on onnxruntime. Top-1 is the gated model's
on the digits test split, which the converted model computes exactly.

Writes benchmarks/results/gating.csv (model,method,cost,target,measured_latency_ratio,flops_ratio,
top1_mean,top1_std,seeds; means over seeds; cost = the cost term's final value over its dense value,
flops_ratio = fvcore FLOPs of the compacted model over dense at --export-size) and gating.md (the
same plus every run). Work files (dense checkpoints, LUTs, ONNX files, a journal of finished runs
from which a rerun resumes) go to out/gating/.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from journal import Journal, digits_loaders

from hwprune.errors import HwpruneError, first_line
from hwprune.graph_mapper import build_channel_graph
from hwprune.latency.profiler import profile_edges
from hwprune.models import get_model
from hwprune.models.weights import load_weights
from hwprune.prune.gating import GatingConfig, gate
from hwprune.prune.gating.ship import ship_gated
from hwprune.train import TrainConfig, save_checkpoint, train

RESULTS = Path(__file__).parent / "results"
WORK = Path("out/gating")
COLUMNS = [
    "model", "method", "cost", "target", "measured_latency_ratio", "flops_ratio", "top1_mean", "top1_std", "seeds",
]  # fmt: skip
METHODS = ("gator-flops", "gator-latency")


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--targets", default="0.5,0.3", help="cost-term ratios to prune to")
    p.add_argument("--image-size", type=int, default=32, help="training input side")
    p.add_argument("--export-size", type=int, default=128, help="input side of the LUT, export and timing")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--repeats", type=int, default=30, help="timed rounds (more until 0.5 %% precision, 10x max)")
    p.add_argument("--dense-epochs", type=int, default=6)
    p.add_argument("--dense-lr", type=float, default=0.05)
    p.add_argument("--gate-epochs", type=int, default=6)
    p.add_argument("--gate-lr", type=float, default=0.02)
    p.add_argument("--criteria-weight", type=float, default=1.0)
    p.add_argument("--gradient-multiplier", type=float, default=100.0)
    p.add_argument("--round-to", type=int, default=16, help="channels per gate (ORT-CPU alignment; 1 = GATOR)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--calibration-masks", type=int, default=6, help="whole-network masks in each LUT")
    return p.parse_args()


def example(args) -> torch.Tensor:
    return torch.randn(1, 3, args.export_size, args.export_size, generator=torch.Generator().manual_seed(0))


def lut_for(name: str, args) -> Path:
    """The model's edge profile on ort-cpu at the export size (made once; resumes from its journal)."""
    path = WORK / f"{name}_lut.json"
    if not path.exists():
        model = get_model(name, num_classes=10, in_channels=3).eval()
        x = example(args)
        graph = build_channel_graph(model, x, name)
        start = time.perf_counter()
        lut = profile_edges(
            model, graph, x, "ort-cpu", threads=args.threads, repeats=20, journal=WORK / f"{name}_lut.jsonl",
            round_to=16, calibration_masks=args.calibration_masks,
        )  # fmt: skip
        lut.meta["profile_s"] = time.perf_counter() - start
        lut.save(path)
    return path


def dense_weights(name: str, seed: int, args, journal: Journal) -> Path:
    """A dense model trained on digits (made once per model and seed), its accuracy in the journal."""
    path = WORK / f"{name}_s{seed}_dense"
    if not path.with_suffix(".safetensors").exists():
        torch.manual_seed(seed)
        model = get_model(name, num_classes=10, in_channels=3, input_size=args.image_size)
        train_loader, test_loader = digits_loaders(args.image_size, args.batch_size, seed)
        config = TrainConfig(epochs=args.dense_epochs, lr=args.dense_lr, batch_size=args.batch_size, seed=seed)
        result = train(model, train_loader, test_loader, config)
        save_checkpoint(model, path, {"top1": result.last_top1})
        journal.record(
            model=name,
            method="dense",
            target=None,
            seed=seed,
            cost=1.0,
            latency_ratio=1.0,
            flops_ratio=1.0,
            top1=result.last_top1,
            seconds=result.seconds,
        )
    return path.with_suffix(".safetensors")


def gating_run(name: str, method: str, target: float, seed: int, args, journal: Journal) -> None:
    torch.manual_seed(seed)
    model = get_model(name, num_classes=10, in_channels=3, input_size=args.image_size)
    load_weights(model, dense_weights(name, seed, args, journal), name)
    train_loader, test_loader = digits_loaders(args.image_size, args.batch_size, seed)
    config = GatingConfig(
        criteria_weight=args.criteria_weight,
        gradient_multiplier=args.gradient_multiplier,
        target=target,
        round_to=args.round_to,
    )
    run = TrainConfig(epochs=args.gate_epochs, lr=args.gate_lr, batch_size=args.batch_size, seed=seed)
    lut = lut_for(name, args) if method == "gator-latency" else None
    start = time.perf_counter()
    result = gate(model, train_loader, test_loader, config=config, train_config=run, lut=lut, progress=False,
                  name=name)  # fmt: skip
    seconds = time.perf_counter() - start
    onnx = WORK / f"{name}_{method}_t{target}_s{seed}.onnx"
    outcome = ship_gated(result, example(args), onnx, method, "digits", name=name, threads=args.threads,
                         repeats=args.repeats, results=WORK / "results.csv", seed=seed)  # fmt: skip
    rec = outcome.record
    journal.record(
        model=name,
        method=method,
        target=target,
        seed=seed,
        cost=result.history[-1]["cost_ratio"],
        latency_ratio=outcome.ratio,
        flops_ratio=rec.flops / rec.flops_before,
        top1=result.train.last_top1,
        seconds=seconds,
        dense_ms=outcome.baseline.median_ms,
        pruned_ms=outcome.shipped.median_ms,
        max_rel_diff=json.loads(rec.extra)["max_rel_diff"],
    )


def table(journal: Journal) -> pd.DataFrame:
    runs = pd.DataFrame(journal)
    if "failed" in runs:
        runs = runs[runs["failed"].isna()]
    rows = []
    for (model, method, target), g in runs.groupby(["model", "method", "target"], dropna=False, sort=False):
        top1 = g["top1"].tolist()
        rows.append({
            "model": model, "method": method, "cost": g["cost"].mean(), "target": target,
            "measured_latency_ratio": g["latency_ratio"].mean(), "flops_ratio": g["flops_ratio"].mean(),
            "top1_mean": statistics.mean(top1), "top1_std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
            "seeds": len(top1),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS).round(4)


def at_equal_latency(frame: pd.DataFrame) -> list[str]:
    """gator-latency's top-1 interpolated (linearly, over its targets) at each gator-flops latency ratio."""
    lines = []
    for model, g in frame.groupby("model", sort=False):
        lat = g[g.method == "gator-latency"].sort_values("measured_latency_ratio")
        if len(lat) < 2:
            continue
        for _, row in g[g.method == "gator-flops"].iterrows():
            x = row.measured_latency_ratio
            if lat.measured_latency_ratio.min() <= x <= lat.measured_latency_ratio.max():
                top1 = float(np.interp(x, lat.measured_latency_ratio, lat.top1_mean))
                lines.append(f"| {model} | {x:.3f} | {row.top1_mean:.4f} | {top1:.4f} | {top1 - row.top1_mean:+.4f} |")
            else:
                lines.append(f"| {model} | {x:.3f} | {row.top1_mean:.4f} | outside gator-latency's range | |")
    if not lines:
        return []
    head = "| model | latency ratio | gator-flops top-1 | gator-latency top-1 (interpolated) | difference |"
    return ["## At equal measured latency", "", head, "|---|---:|---:|---:|---:|", *lines, ""]


def multiplier_lines() -> list[str]:
    """The spread of gator-latency's edge multipliers per model (from the rows logged in the work folder)."""
    from hwprune.results import ResultsStore

    seen, lines = set(), []
    for rec in ResultsStore(WORK / "results.csv").records() if (WORK / "results.csv").exists() else []:
        if rec.method != "gator-latency" or rec.model in seen:
            continue
        seen.add(rec.model)
        m = np.array(rec.extra_dict()["gating"]["edge_multipliers"])
        lines.append(
            f"| {rec.model} | {m.size} | {np.min(m):.2f} | {np.median(m):.2f} | {np.max(m):.2f} | "
            f"{', '.join(f'{v:.2f}' for v in m)} |"
        )
    if not lines:
        return []
    head = "| model | gated groups | min | median | max | per group (graph order) |"
    note = "(% latency drop) / (% FLOPs drop) with the group at half its channels, as the LUT's latency model predicts."
    return ["## gator-latency's edge multipliers", "", note, "", head, "|---|---:|---:|---:|---:|---|", *lines, ""]


def write(journal: Journal, args) -> None:
    frame = table(journal)
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame.to_csv(RESULTS / "gating.csv", index=False)
    runs = pd.DataFrame(journal).round(4)
    command = "python benchmarks/gating.py " + " ".join(sys.argv[1:])
    note = (
        "# GATOR gating on digits: gator-flops vs gator-latency (ONNX Runtime CPU)\n\n"
        f"Command: `OMP_NUM_THREADS=1 {command.strip()}` (settings: {json.dumps(vars(args))}).\n\n"
        f"Training on digits at {args.image_size} px (3 channels); LUT, export and timing at {args.export_size} px, "
        f"batch 1, {args.threads} onnxruntime thread(s), interleaved with the dense model (paired rounds). "
        "cost: the cost term's final value over its dense value (flop_factor; gator-latency with the LUT's "
        "latency multipliers); target: the requested cost ratio; measured_latency_ratio: shipped ONNX over dense "
        "ONNX; flops_ratio: fvcore FLOPs (one multiply-add = one FLOP) of the compacted over the dense model; "
        "top1: the converted model's accuracy on the digits test split (360 images), mean and std over seeds; "
        "seeds: the runs that finished (a run whose training diverged is listed below with its error and left out "
        "of the means).\n"
    )
    equal = "\n".join(at_equal_latency(frame) + multiplier_lines())
    (RESULTS / "gating.md").write_text(
        f"{note}\n{frame.to_markdown(index=False)}\n\n{equal}\n## Every run\n\n{runs.to_markdown(index=False)}\n"
    )
    print(frame.to_markdown(index=False), flush=True)


def main() -> None:
    args = arguments()
    torch.set_num_threads(1)
    WORK.mkdir(parents=True, exist_ok=True)
    journal = Journal(WORK / "journal.jsonl")
    done = {(r["model"], r["method"], r["target"], r["seed"]) for r in journal}
    models = args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    targets = [float(t) for t in args.targets.split(",")]
    for seed in seeds:  # every model once before the next seed: a stopped run still covers both
        for name in models:
            dense_weights(name, seed, args, journal)
            for target in targets:
                for method in METHODS:
                    if (name, method, target, seed) in done:
                        continue
                    try:
                        gating_run(name, method, target, seed, args, journal)
                    except HwpruneError as exc:  # a diverged run is a result too: logged, left out of the means
                        journal.record(model=name, method=method, target=target, seed=seed, failed=first_line(exc))
                    write(journal, args)
    write(journal, args)


if __name__ == "__main__":
    main()
