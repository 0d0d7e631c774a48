"""Channel alignment on ONNX Runtime CPU: FLOPs say fewer channels are faster; the hardware disagrees.

resnet18 at 224x224, batch 1: every prunable group kept at half its channels plus an offset
(-16, -8, -4, -1, 0, +1, +8); all variants timed interleaved with the dense model.
Writes benchmarks/results/alignment.csv and .md.

    python benchmarks/alignment.py [--threads 1]
"""

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hwprune.export.compact import compact_model
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.cost import CostModel, kept_shares
from hwprune.latency.backends import measure
from hwprune.latency.profiler import profiled_groups
from hwprune.models import get_model
from hwprune.prune.channel import top_k_mask
from hwprune.prune.masks import ChannelMask

OFFSETS = (-16, -8, -4, -1, 0, 1, 8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = get_model("torchvision:resnet18").eval()
    x = torch.randn(1, 3, 224, 224)
    graph = build_channel_graph(model, x, "resnet18")
    costs = CostModel(graph)
    rng = np.random.default_rng(0)
    variants, rows = [model], []
    for offset in OFFSETS:
        mask = ChannelMask.full(graph)
        for g in profiled_groups(graph):
            mask.keep[g.id] = top_k_mask(g, rng.random(g.size), g.size // 2 + offset)
        variants.append(compact_model(graph, mask))
        widths = sorted({int(k.sum()) for k in mask.keep.values()})
        rows.append(
            dict(
                offset=offset,
                widths="/".join(map(str, widths)),
                macs_ratio=round(costs.cost(kept_shares(graph, mask))[0] / costs.total_macs, 4),
            )
        )
    results = measure("ort-cpu", variants, x, threads=args.threads, repeats=30, exporter="torchscript")
    dense = results[0].median_ms
    for row, m in zip(rows, results[1:], strict=True):
        row.update(
            latency_ms=round(m.median_ms, 3), iqr_ms=round(m.iqr_ms, 3), latency_ratio=round(m.median_ms / dense, 4)
        )
    frame = pd.DataFrame(rows)
    out = Path(__file__).parent / "results"
    frame.to_csv(out / "alignment.csv", index=False)
    note = (
        f"# Channel alignment, resnet18 224x224 batch 1, ONNX Runtime CPU, {args.threads} thread(s)\n\n"
        f"Dense: {dense:.2f} ms. Every prunable group keeps half its channels + offset; widths are the "
        "distinct kept counts. macs_ratio: conv/linear MACs vs dense (1 multiply-add = 1 FLOP)."
    )
    (out / "alignment.md").write_text(f"{note}\n\n{frame.to_markdown(index=False)}\n")
    print(frame.to_markdown(index=False))


if __name__ == "__main__":
    main()
