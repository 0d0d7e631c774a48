"""Seed-004 tables, curves and per-layer tables/plots from the results store.

Examples::

    python tools/compare_results.py --results runs/results.csv --out out/compare
    python tools/compare_results.py --results runs/results.csv --model vgg16 --dataset cifar10 --layer-compression 10

Writes markdown + CSV tables (accuracy, testing time, FLOPs x compression x method; per-layer sparsity
and FLOPs), PNG curves, weight histograms per layer (when the sweep saved weights), and ``index.md``.
"""

from __future__ import annotations

import argparse
import sys

from hwprune.errors import HwpruneError
from hwprune.results.compare import compare, default_layer_compression, sweep_rows
from hwprune.results.store import ResultsStore

PROG = "hwprune compare"


def main(argv: list[str] | None = None) -> int:
    """Write the comparison; 0 on success, 2 with ``compare_results: error: ...`` otherwise."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="runs/results.csv", help="results CSV (default runs/results.csv)")
    p.add_argument("--out", default="out/compare", help="output folder (default out/compare)")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--layer-compression", type=float, default=None, help="compression of the per-layer tables")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--no-histograms", action="store_true", help="skip the weight histograms (they need torch)")
    args = p.parse_args(argv)
    try:
        written = compare(
            args.results,
            args.out,
            model=args.model,
            dataset=args.dataset,
            layer_compression=args.layer_compression,
            plots=not args.no_plots,
        )
        if not args.no_plots and not args.no_histograms:
            from hwprune.analysis import weight_histograms

            rows = [
                r
                for r in sweep_rows(ResultsStore(args.results).records())
                if (args.model is None or r.model == args.model) and (args.dataset is None or r.dataset == args.dataset)
            ]
            at = []
            for key in {(r.model, r.dataset, r.mode) for r in rows}:
                group = [r for r in rows if (r.model, r.dataset, r.mode) == key]
                comps = sorted({r.compression for r in group})
                c = (
                    args.layer_compression
                    if args.layer_compression in comps
                    else default_layer_compression(comps, key[2])
                )
                at += [r for r in group if r.compression == c]
            hist = weight_histograms(at, args.out)
            if hist:
                index = written[-1]
                index.write_text(
                    index.read_text()
                    + "\n## Weight histograms (kept weights after training)\n\n"
                    + "\n".join(f"- [{h.name}]({h.name})\n\n![{h.name}]({h.name})\n" for h in hist)
                )
                written = [*written[:-1], *hist, index]
    except HwpruneError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"{PROG}: {len(written)} files; start at {written[-1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
