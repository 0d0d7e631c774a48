"""Tables and plots from the results store: at-init sweeps, and budget runs' accuracy against measured latency.

Examples::

    python tools/compare_results.py --results runs/results.csv --out out/compare
    python tools/compare_results.py --results runs/results.csv --model vgg16 --dataset cifar10 --layer-compression 10

Writes markdown + CSV tables (accuracy, testing time, FLOPs x compression x method; per-layer sparsity
and FLOPs), PNG curves, weight histograms per layer (when the sweep saved weights), per model the budget
runs of ``prune ... --data`` (top-1 against the shipped file's measured latency ratio, FLOPs and params
ratios) with an accuracy-vs-latency plot, and ``index.md``.
"""

from __future__ import annotations

import argparse
import pickle
import sys

from hwprune import checks
from hwprune.checks import StagedDir
from hwprune.errors import HwpruneError, OneLineParser, first_line
from hwprune.results.compare import compare, default_layer_compression, sweep_rows
from hwprune.results.store import ResultsStore

PROG = "hwprune compare"


def main(argv: list[str] | None = None) -> int:
    """Write the comparison; 0 on success, 2 with ``hwprune compare: error: ...`` (one line) otherwise.

    The inputs are checked first (the results file, every weights file the histograms will read); the
    output folder is written whole or not at all (:class:`hwprune.checks.StagedDir`).
    """
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="runs/results.csv", help="results CSV (default runs/results.csv)")
    p.add_argument("--out", default="out/compare", help="output folder (default out/compare)")
    p.add_argument("--model", default=None, help="only this model")
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--layer-compression", type=float, default=None, help="compression of the per-layer tables")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--no-histograms", action="store_true", help="skip the weight histograms (they need torch)")
    try:
        args = p.parse_args(argv)
        hint = ": run `hwprune prune-at-init` or `hwprune prune --data` first"
        checks.input_file(args.results, "--results", "results file", hint)
        if args.layer_compression is not None:
            checks.real(args.layer_compression, "--layer-compression", 0.0, low_open=True, example="10")
        checks.output_dir(args.out)
        histograms = not args.no_plots and not args.no_histograms
        at = _histogram_rows(args) if histograms else []
        _check_weights(at)
        with StagedDir(args.out) as stage:
            written = compare(
                args.results,
                stage.path,
                model=args.model,
                dataset=args.dataset,
                layer_compression=args.layer_compression,
                plots=not args.no_plots,
            )
            if histograms:
                from hwprune.at_init.analysis import weight_histograms

                hist = weight_histograms(at, stage.path)
                if hist:
                    index = written[-1]
                    index.write_text(
                        index.read_text()
                        + "\n## Weight histograms (kept weights after training)\n\n"
                        + "\n".join(f"- [{h.name}]({h.name})\n\n![{h.name}]({h.name})\n" for h in hist)
                    )
                    written = [*written[:-1], *hist, index]
            written = [stage.final_path(w) for w in written]
            stage.commit()
    except HwpruneError as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    print(f"{PROG}: {len(written)} files; start at {written[-1]}")
    return 0


def _histogram_rows(args) -> list:
    """The sweep rows whose weights the histograms draw: per (model, dataset, mode), one compression."""
    rows = [
        r
        for r in sweep_rows(ResultsStore(args.results).records())
        if (args.model is None or r.model == args.model) and (args.dataset is None or r.dataset == args.dataset)
    ]
    at = []
    for key in {(r.model, r.dataset, r.mode) for r in rows}:
        group = [r for r in rows if (r.model, r.dataset, r.mode) == key]
        comps = sorted({r.compression for r in group})
        c = args.layer_compression if args.layer_compression in comps else default_layer_compression(comps, key[2])
        at += [r for r in group if r.compression == c]
    return at


def _check_weights(rows) -> None:
    """Every saved weights file the histograms will read loads as tensors only (nothing unpickled runs)."""
    from pathlib import Path

    for r in rows:
        path = r.artifacts.get("weights")
        if not path or not Path(path).is_file():
            continue  # not saved, or moved away: that histogram is skipped
        import torch

        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            why = "it holds objects other than tensors (unpickling them could run code)"
        except Exception as exc:  # RuntimeError, OSError ... for a damaged file
            why = f"it is damaged or not a weights file ({type(exc).__name__})"
        else:
            continue
        raise HwpruneError(
            f"weights file {path} ({r.model}, {r.method}, compression {r.compression:g}) is refused: {why}; "
            "regenerate it with `hwprune prune-at-init --save-weights`, or pass --no-histograms"
        )


if __name__ == "__main__":
    sys.exit(main())
