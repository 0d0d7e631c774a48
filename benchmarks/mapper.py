"""Mapper coverage and speed on the foundation zoo.

Writes benchmarks/results/mapper_coverage.csv (+ .md): per model, groups, prunable groups, the
share of conv/linear/matmul FLOPs in ops with a prunable channel axis (denominator: fvcore), graph
build time (warm, min of 3), and the equivalence of a random 40 % mask (compacted vs masked, ONNX vs
compacted). And benchmarks/results/mapper_speed.csv (+ .md): warm min-of-5 timings at the input
sizes of the Torch-Pruning reference numbers given in the foundation issue.

    python benchmarks/mapper.py [--models resnet18,resnet50] [--skip-speed]
"""

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from fvcore.nn import FlopCountAnalysis

from hwprune.export.compact import compact_model
from hwprune.export.pipeline import export_pruned
from hwprune.graph_mapper import build_channel_graph
from hwprune.models import get_model
from hwprune.models.zoo import zoo_case, zoo_cases
from hwprune.prune.channel import mask_from_scores, norm_scores, random_scores

RESULTS = Path(__file__).parent / "results"
MATMUL_OPS = {"conv", "linear", "addmm", "matmul", "bmm", "einsum", "mm", "_convolution"}

# Torch-Pruning 1.6.1 reference timings from the foundation issue (same machine class, warm, min of 5)
SPEED_CASES = [
    # model, input size, TP DependencyGraph build + grouping (s), TP pruner construction + step (s)
    ("torchvision:resnet50", 224, 0.14, None),
    ("torchvision:densenet121", 64, 1.0, 18.0),
    ("torchvision:mobilenet_v2", 224, 0.05, None),
    ("torchvision:resnet50", 64, None, 0.28),
]


def conv_linear_flops(model, x):
    counter = FlopCountAnalysis(model, x)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return sum(v for k, v in counter.by_operator().items() if k in MATMUL_OPS)


def min_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def coverage_row(qualified, size):
    model, x = zoo_case(qualified, size)
    build_channel_graph(model, x, qualified)  # warm
    build_s = min_time(lambda: build_channel_graph(model, x, qualified), 3)
    graph = build_channel_graph(model, x, qualified)
    # fvcore counts the whole batch; the graph's MACs are per sample
    share = graph.prunable_macs_share(conv_linear_flops(model, x) / x.shape[0])
    mask = mask_from_scores(graph, random_scores(graph, 1), 0.4)
    row = dict(
        model=qualified,
        input=f"{tuple(x.shape)}",
        groups=len(graph.groups),
        prunable_groups=len(graph.prunable_groups),
        prunable_flops_share=round(share, 4),
        build_s=round(build_s, 4),
        max_rel_diff=None,
        onnx_max_rel_diff=None,
        ok=False,
        error="",
    )
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _, report = export_pruned(model, graph, mask, x, Path(tmp) / "m.onnx")
        row.update(max_rel_diff=report.max_rel_diff, onnx_max_rel_diff=report.onnx_max_rel_diff, ok=True)
    except Exception as exc:  # a benchmark records failures instead of stopping
        row["error"] = str(exc).splitlines()[0][:200]
    return row


def speed_row(qualified, size, tp_build, tp_prune):
    model = get_model(qualified).eval()
    x = torch.randn(1, 3, size, size)
    build_channel_graph(model, x, qualified)
    build_s = min_time(lambda: build_channel_graph(model, x, qualified), 7)

    def map_mask_compact():
        graph = build_channel_graph(model, x, qualified)
        compact_model(graph, mask_from_scores(graph, norm_scores(graph, model), 0.5))

    full_s = min_time(map_mask_compact, 7)
    return dict(
        model=qualified,
        input=size,
        build_s=round(build_s, 4),
        tp_build_s=tp_build,
        build_goal_met=None if tp_build is None else build_s <= tp_build,
        map_mask_compact_s=round(full_s, 4),
        tp_prune_s=tp_prune,
        prune_goal_met=None if tp_prune is None else full_s <= tp_prune / 2,
    )


COVERAGE_COLUMNS = [
    "model",
    "groups",
    "prunable_groups",
    "prunable_flops_share",
    "build_s",
    "max_rel_diff",
    "onnx_max_rel_diff",
    "ok",
]


def write(frame, name, note, csv_columns=None):
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame[csv_columns or list(frame.columns)].to_csv(RESULTS / f"{name}.csv", index=False)
    (RESULTS / f"{name}.md").write_text(f"{note}\n\n{frame.to_markdown(index=False)}\n")
    print(frame.to_markdown(index=False))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated subset of the zoo")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cases = zoo_cases()
    if args.models:
        wanted = set(args.models.split(","))
        cases = [c for c in cases if c[0].split(":")[-1] in wanted or c[0] in wanted]
    if not args.skip_speed:  # first: a fresh process times most steadily
        speed = pd.DataFrame([speed_row(*case) for case in SPEED_CASES])
        write(
            speed,
            "mapper_speed",
            "# Mapper speed (warm, min of 7, batch 1, 2 threads)\n\nbuild_s: trace + shape propagation + "
            "groups. map_mask_compact_s: build + L1 scores + mask (50 %) + compaction. Goals from the "
            "foundation issue: build_s <= Torch-Pruning's DependencyGraph build + grouping (tp_build_s); "
            "map_mask_compact_s <= half of Torch-Pruning's pruner construction + step (tp_prune_s).",
        )

    rows = []
    for qualified, size in cases:
        rows.append(coverage_row(qualified, size))
        print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    n_ok = int(frame.ok.sum())
    write(
        frame,
        "mapper_coverage",
        f"# Mapper coverage ({torch.__version__}, 2 threads)\n\n{n_ok}/{len(frame)} models pass. "
        "Random 40 % channel mask on every prunable exact group; max_rel_diff: compacted vs masked model; "
        "onnx_max_rel_diff: onnxruntime vs compacted. prunable_flops_share: FLOPs of conv/linear ops with "
        "a prunable channel axis over fvcore's conv+linear+matmul total (1 multiply-add = 1 FLOP).",
        COVERAGE_COLUMNS,
    )


if __name__ == "__main__":
    main()
