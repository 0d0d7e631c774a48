"""Mapper coverage (built-in models, the whole torchvision classification zoo, the timm set) and speed.

Writes benchmarks/results/mapper_coverage.csv (+ .md): per model, both front-ends (fx: map, random
40 % mask, compact, export, verify; ONNX: map the dense export, compact the ONNX file, verify in
onnxruntime), groups, prunable groups, the share of conv/linear/matmul FLOPs in ops with a prunable
channel axis (denominator: fvcore), graph build time, and a "N/M models pass" line. And
benchmarks/results/mapper_speed.csv (+ .md): hwprune and Torch-Pruning timed side by side in this
process, alternating, same model instance, input and threads, warm, min over rounds (Torch-Pruning is a
benchmark-only dependency: benchmarks/requirements-peers.txt; run this script with that environment).

    python benchmarks/mapper.py [--models resnet18,resnet50] [--skip-speed] [--skip-coverage] [--threads 1]
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from fvcore.nn import FlopCountAnalysis
from tqdm import tqdm

from hwprune.export.compact import compact_model
from hwprune.export.onnx_compact import prune_onnx_file
from hwprune.export.onnx_export import export_onnx
from hwprune.export.pipeline import export_pruned
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.crosscheck import match_groups, onnx_groups_of
from hwprune.graph_mapper.flops import native_mha_flops
from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph
from hwprune.models import get_model
from hwprune.models.zoo import zoo_case, zoo_cases
from hwprune.prune.channel import norm_scores, random_scores, uniform_channel_mask

RESULTS = Path(__file__).parent / "results"
MATMUL_OPS = {
    "conv",
    "linear",
    "addmm",
    "matmul",
    "bmm",
    "einsum",
    "mm",
    "_convolution",
    "_native_multi_head_attention",
}

SPEED_CASES = [  # model, input side
    ("torchvision:resnet50", 224),
    ("torchvision:mobilenet_v2", 224),
    ("torchvision:densenet121", 64),
    ("torchvision:resnet50", 64),
    ("torchvision:efficientnet_b0", 64),
    ("torchvision:regnet_y_400mf", 64),
    ("torchvision:convnext_tiny", 64),
    ("torchvision:vit_b_16", 224),
]
SPEED_ROUNDS = 5
SPEED_COLUMNS = [
    "model", "input", "build_s", "tp_build_s", "build_ratio", "map_mask_compact_s", "tp_prune_s", "prune_ratio",
]  # fmt: skip


def conv_linear_flops(model, x):
    counter = FlopCountAnalysis(model, x)
    counter.set_op_handle("aten::_native_multi_head_attention", native_mha_flops)
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return sum(v for k, v in counter.by_operator().items() if k in MATMUL_OPS)


def min_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def coverage_row(qualified, size, tmp: Path):
    """fx front-end (map, mask, compact, export) and ONNX front-end (map the dense export, compact it)."""
    row = dict(model=qualified, source=qualified.split(":")[0], fx_ok=False, onnx_ok=False, ok=False, error="")
    model, x = zoo_case(qualified, size)
    row["input"] = f"{tuple(x.shape)}"
    mask = fx_graph = None
    try:
        build_channel_graph(model, x, qualified)  # warm
        row["build_s"] = round(min_time(lambda: build_channel_graph(model, x, qualified), 3), 4)
        start = time.perf_counter()
        fx_graph = build_channel_graph(model, x, qualified)
        mask = uniform_channel_mask(fx_graph, random_scores(fx_graph, 1), 0.4)
        compact_model(fx_graph, mask)
        row["map_mask_compact_s"] = round(time.perf_counter() - start, 3)
        # fvcore counts the whole batch; the graph's MACs are per sample
        share = fx_graph.prunable_macs_share(conv_linear_flops(model, x) / x.shape[0])
        row.update(groups=len(fx_graph.groups), prunable_groups=len(fx_graph.prunable_groups))
        row["prunable_flops_share"] = round(share, 4)
        _, report = export_pruned(model, fx_graph, mask, x, tmp / "fx.onnx")
        row.update(max_rel_diff=report.max_rel_diff, export_rel_diff=report.onnx_max_rel_diff, fx_ok=True)
    except Exception as exc:  # a benchmark records failures instead of stopping
        row["error"] = f"fx: {str(exc).splitlines()[0][:160]}"
    try:
        export_onnx(model, x, tmp / "dense.onnx")
        onnx_graph = build_onnx_channel_graph(tmp / "dense.onnx", qualified)
        row["onnx_groups"] = len(onnx_graph.groups)
        row["onnx_prunable_groups"] = len(onnx_graph.prunable_groups)
        onnx_mask = uniform_channel_mask(onnx_graph, random_scores(onnx_graph, 1), 0.4)
        report = prune_onnx_file(tmp / "dense.onnx", onnx_mask, tmp / "onnx_pruned.onnx", graph=onnx_graph)
        row.update(onnx_max_rel_diff=report.max_rel_diff, onnx_ok=report.max_rel_diff is not None)
        if fx_graph is not None:
            match = match_groups(fx_graph, onnx_graph)
            split = any(len(ids) > 1 for ids in onnx_groups_of(fx_graph, onnx_graph, match.resolved).values())
            row["fx_onnx_match"] = "same" if match.ok else "fx group split" if split else "onnx coarser"
            row["match_note"] = "; ".join(match.differences[:2])[:160]
    except Exception as exc:
        row["error"] += f" onnx: {str(exc).splitlines()[0][:160]}"
    row["ok"] = row["fx_ok"] and row["onnx_ok"]
    return row


def speed_row(qualified, size):
    """hwprune and Torch-Pruning on one model instance, alternating step by step, min over SPEED_ROUNDS rounds.

    Builds: hwprune's channel graph vs Torch-Pruning's DependencyGraph + all groups. Pruning: hwprune's build
    + L1 scores + a 50 % uniform mask + compaction (a new module) vs Torch-Pruning's MetaPruner construction
    (L1 magnitude, 50 %, classifier ignored) + step on a copy (copied outside the timed region).
    """
    import torch_pruning as tp

    model = get_model(qualified).eval()
    x = torch.randn(1, 3, size, size)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]

    def hw_build():
        build_channel_graph(model, x, qualified)

    def tp_build():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)
        list(graph.get_all_groups())

    def hw_prune():
        graph = build_channel_graph(model, x, qualified)
        compact_model(graph, uniform_channel_mask(graph, norm_scores(graph, model), 0.5))

    def tp_prune(victim):
        importance = tp.importance.MagnitudeImportance(p=1)
        tp.pruner.MetaPruner(victim, x, importance, pruning_ratio=0.5, ignored_layers=[victim_head(victim)]).step()

    def victim_head(victim):
        return dict(victim.named_modules())[next(n for n, m in model.named_modules() if m is head)]

    times = {k: [] for k in ("build_s", "tp_build_s", "map_mask_compact_s", "tp_prune_s")}
    errors = {}
    hw_build(), tp_build()  # warm (Torch-Pruning traces autograd: no torch.no_grad here)
    for _ in range(SPEED_ROUNDS):
        for key, fn in (("build_s", hw_build), ("tp_build_s", tp_build), ("map_mask_compact_s", hw_prune)):
            times[key].append(timed(fn))
        if "tp_prune_s" not in errors:
            victim = copy.deepcopy(model)
            try:
                times["tp_prune_s"].append(timed(lambda v=victim: tp_prune(v)))
            except Exception as exc:  # a peer that cannot prune this model is recorded, not fatal
                errors["tp_prune_s"] = str(exc).splitlines()[0][:120]
    row = {"model": qualified, "input": size, **{k: round(min(v), 4) if v else None for k, v in times.items()}}
    row["build_ratio"] = round(row["build_s"] / row["tp_build_s"], 3)
    row["prune_ratio"] = round(row["map_mask_compact_s"] / row["tp_prune_s"], 3) if row["tp_prune_s"] else None
    row["note"] = "; ".join(f"Torch-Pruning failed: {e}" for e in errors.values())
    return row


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


COVERAGE_COLUMNS = [
    "model",
    "source",
    "fx_ok",
    "onnx_ok",
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
    parser.add_argument("--skip-coverage", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both tools")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = zoo_cases()
    if args.models:
        wanted = set(args.models.split(","))
        cases = [c for c in cases if c[0].split(":")[-1] in wanted or c[0] in wanted]
    if not args.skip_speed:  # first: a fresh process times most steadily
        import torch_pruning as tp

        speed = pd.DataFrame([speed_row(*case) for case in tqdm(SPEED_CASES, desc="mapper speed", unit="model")])
        write(
            speed,
            "mapper_speed",
            f"# Mapper speed: hwprune and Torch-Pruning {tp.__version__} side by side\n\nCommand: "
            f"`python benchmarks/mapper.py --skip-coverage --threads {args.threads}` (torch {torch.__version__}, "
            f"{args.threads} thread(s), batch 1, warm, min of {SPEED_ROUNDS} rounds; in each round the four steps "
            "run one after the other on the same model instance and input). build_s: hwprune's trace + shape "
            "propagation + groups; tp_build_s: Torch-Pruning's DependencyGraph build + get_all_groups. "
            "map_mask_compact_s: build + L1 scores + 50 % uniform mask + compaction into a new module; tp_prune_s: "
            "MetaPruner construction (L1 magnitude, ratio 0.5, classifier ignored) + step on a copy. Goals "
            "(issue 15): build_ratio <= 1.0 and prune_ratio <= 0.5 on every row.",
            SPEED_COLUMNS,
        )
    if args.skip_coverage:
        return

    rows = []
    for qualified, size in tqdm(cases, desc="mapper coverage", unit="model"):
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(coverage_row(qualified, size, Path(tmp)))
        tqdm.write(str(rows[-1]))
    frame = pd.DataFrame(rows)
    earlier = RESULTS / "mapper_coverage.csv"
    if args.models and earlier.exists():  # a subset rerun replaces those models' rows, keeps the others
        kept = pd.read_csv(earlier)
        frame = pd.concat([kept[~kept.model.isin(frame.model)], frame], ignore_index=True)
    n_ok = int(frame.ok.sum())
    write(
        frame,
        "mapper_coverage",
        f"# Mapper coverage ({torch.__version__}, 2 threads)\n\n{n_ok}/{len(frame)} models pass.\n\n"
        "Command: `python benchmarks/mapper.py --skip-speed` (`--models a,b` reruns those rows and keeps the rest). "
        "Seed models, every torchvision classification model, the timm set. fx_ok: the fx front-end maps "
        "the model, a random 40 % channel mask on every prunable exact group compacts it with "
        "max_rel_diff (compacted vs masked model) and export_rel_diff (onnxruntime vs compacted) within "
        "1e-4. onnx_ok: the ONNX front-end maps the dense ONNX export, a random 40 % mask compacts the ONNX "
        "file and onnx_max_rel_diff (compacted vs masked ONNX, both in onnxruntime) is within 1e-4. "
        "fx_onnx_match: `same` when both front-ends find the same groups on conv/linear weights, `onnx coarser` "
        "when an ONNX group joins fx groups (fused q/k/v reshapes; see tests/test_onnx_zoo.py). ok = fx_ok and "
        "onnx_ok. prunable_flops_share: FLOPs of conv/linear ops with a prunable channel axis over "
        "fvcore's conv+linear+matmul (+ fused attention) total (1 multiply-add = 1 FLOP). build_s: fx "
        "graph build, warm, min of 3; map_mask_compact_s: one warm build + mask + compaction.",
        COVERAGE_COLUMNS,
    )


if __name__ == "__main__":
    main()
