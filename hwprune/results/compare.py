"""Prune-at-init tables and curves from the results store (torch-free: reads the CSV only).

From the rows :mod:`hwprune.at_init.sweep` writes (``mask_kind`` weight, ``target_kind`` density,
``extra.compression_mode`` set), for each (model, dataset, compression mode):

- compression x method tables of test accuracy (top-1 and top-5, %), testing time (s) and effective
  FLOPs, as markdown and CSV; a cell is ``mean ± std`` over the seeds when there are several (sample
  standard deviation, ddof = 1), the plain value for one seed;
- curves (PNG): each metric against compression, one line per method (error bars = std);
- per-layer sparsity (1 - kept/total, %) and per-layer effective FLOPs at one compression (10x in
  ratio mode, 10^1 in exponent mode, when present), method by method, plus a bar chart;
- an architecture table (model x method top-1 at that compression) when the store holds several models;
- ``index.md`` listing every file written.

Weight histograms need the saved weights and torch: :mod:`hwprune.at_init.analysis` draws them.
"""

from __future__ import annotations

import csv
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hwprune.errors import HwpruneError
from hwprune.results.budget_runs import budget_rows, write_budget_tables
from hwprune.results.schema import RunRecord
from hwprune.results.store import ResultsStore

__all__ = [
    "METHOD_ORDER",
    "METRICS",
    "Cell",
    "SweepRow",
    "aggregate",
    "compare",
    "compression_label",
    "markdown_table",
    "sweep_rows",
]

METHOD_ORDER = ("rand", "mag", "snip", "grasp", "synflow")
METHOD_TITLES = {"rand": "Rand", "mag": "Mag", "snip": "SNIP", "grasp": "GraSP", "synflow": "SynFlow"}


@dataclass(frozen=True)
class Metric:
    """A table metric: its key in :class:`SweepRow`, title, unit, scale and number format."""

    key: str
    title: str
    unit: str
    scale: float = 1.0
    fmt: str = ".2f"


METRICS: dict[str, Metric] = {
    "accuracy": Metric("top1", "Test accuracy (top-1)", "%", 100.0, ".2f"),
    "accuracy_top5": Metric("top5", "Test accuracy (top-5)", "%", 100.0, ".2f"),
    "testing_time": Metric("testing_seconds", "Testing time", "s", 1.0, ".4f"),
    "flops": Metric("flops", "FLOPs (effective, 1 MAC = 1 FLOP)", "MFLOPs", 1e-6, ".3f"),
}


@dataclass
class SweepRow:
    """One sweep run, flattened from a :class:`RunRecord` and its ``extra``."""

    model: str
    dataset: str
    mode: str
    compression: float
    method: str
    seed: int | None
    top1: float | None
    top5: float | None
    testing_seconds: float | None
    flops: float | None
    params: float | None
    density: float | None
    collapsed: bool
    collapsed_layers: list[str] = field(default_factory=list)
    status: str = "ok"  # ok / untrainable (connected, at chance after training) / collapsed (no input-output path)
    layer_density: dict[str, float] = field(default_factory=dict)
    layer_flops: dict[str, float] = field(default_factory=dict)
    layer_order: list[str] = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """Mean, sample standard deviation (0 for one value) and count of one table cell."""

    mean: float
    std: float
    n: int

    def format(self, fmt: str) -> str:
        """``mean ± std`` when n > 1, the mean alone otherwise."""
        if self.n > 1:
            return f"{self.mean:{fmt}} ± {self.std:{fmt}}"
        return f"{self.mean:{fmt}}"


def sweep_rows(records: Iterable[RunRecord]) -> list[SweepRow]:
    """The prune-at-init sweep rows among ``records`` (weight masks at a density target with a mode)."""
    rows = []
    for r in records:
        if r.mask_kind != "weight" or r.target_kind != "density" or r.target_value is None:
            continue
        extra = r.extra_dict()
        mode = extra.get("compression_mode")
        if mode not in ("ratio", "exponent"):
            continue
        rows.append(
            SweepRow(
                model=r.model,
                dataset=r.dataset,
                mode=mode,
                compression=float(r.target_value),
                method=r.method,
                seed=r.seed,
                top1=r.accuracy_top1,
                top5=r.accuracy_top5,
                testing_seconds=extra.get("testing_seconds"),
                flops=None if r.flops is None else float(r.flops),
                params=None if r.params is None else float(r.params),
                density=r.density,
                collapsed=bool(extra.get("collapsed", False)),
                collapsed_layers=list(extra.get("collapsed_layers", [])),
                status=extra.get("status", "collapsed" if extra.get("collapsed") else "ok"),
                layer_density=dict(extra.get("layer_density", {})),
                layer_flops=dict(extra.get("layer_flops", {})),
                layer_order=list(extra.get("layers", [])) + list(extra.get("layer_modules", [])),
                artifacts=r.artifacts_dict(),
            )
        )
    return rows


def ordered_methods(methods: Iterable[str]) -> list[str]:
    """The five classic prune-at-init methods first (Rand, Mag, SNIP, GraSP, SynFlow), then the rest sorted."""
    present = set(methods)
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def compression_label(compression: float, mode: str) -> str:
    """``10x`` for a ratio, ``10^0.5`` for an exponent."""
    return f"{compression:g}x" if mode == "ratio" else f"10^{compression:g}"


def _stats(values: Sequence[float]) -> Cell:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return Cell(mean, std, n)


def aggregate(rows: Iterable[SweepRow], metric: Metric) -> dict[tuple[float, str], Cell]:
    """``{(compression, method): Cell}`` of ``metric`` (scaled), over the seeds; missing values skipped."""
    groups: dict[tuple[float, str], list[float]] = defaultdict(list)
    for r in rows:
        value = getattr(r, metric.key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            groups[(r.compression, r.method)].append(float(value) * metric.scale)
    return {k: _stats(v) for k, v in groups.items()}


def markdown_table(
    cells: dict[tuple[float, str], Cell], compressions: Sequence[float], methods: Sequence[str], mode: str, fmt: str
) -> str:
    """The seed's table layout: one row per compression, one column per method (``-`` = no run)."""
    head = "| Compression | " + " | ".join(METHOD_TITLES.get(m, m) for m in methods) + " |"
    sep = "|---|" + "---|" * len(methods)
    lines = [head, sep]
    for c in compressions:
        values = [cells[(c, m)].format(fmt) if (c, m) in cells else "-" for m in methods]
        lines.append(f"| {compression_label(c, mode)} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _plot_curves(path: Path, cells, compressions, methods, mode: str, metric: Metric, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        xs = [c for c in compressions if (c, m) in cells]
        if not xs:
            continue
        ax.errorbar(
            xs,
            [cells[(c, m)].mean for c in xs],
            yerr=[cells[(c, m)].std for c in xs],
            marker="o",
            capsize=3,
            label=METHOD_TITLES.get(m, m),
        )
    ax.set_xlabel("compression ratio (x)" if mode == "ratio" else "compression exponent (density 10^-x)")
    ax.set_ylabel(f"{metric.title} ({metric.unit})")
    if metric.key == "flops":
        ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_layers(
    path: Path, table: dict[str, dict[str, float]], layers: Sequence[str], ylabel: str, title: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(table)
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(layers) + 2), 4))
    for i, m in enumerate(methods):
        xs = [j + i * width for j in range(len(layers))]
        ax.bar(xs, [table[m].get(layer, 0.0) for layer in layers], width, label=METHOD_TITLES.get(m, m))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(layers))])
    ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def default_layer_compression(compressions: Sequence[float], mode: str) -> float:
    """The seed's per-layer setting (10x = density 10 %) when it was run, else the middle compression."""
    target = 10.0 if mode == "ratio" else 1.0
    if target in compressions:
        return target
    return sorted(compressions)[len(compressions) // 2]


def _runs_not_ok(group: list[SweepRow], methods: list[str], mode: str) -> str:
    """One line naming every (method, compression) with runs that are not ``ok``, and how many of each status."""
    failed: dict[tuple[str, float], list[str]] = defaultdict(list)
    for r in group:
        if r.status != "ok":
            failed[(r.method, r.compression)].append(r.status)
    if not failed:
        return ""
    parts = []
    for m, c in sorted(failed, key=lambda t: (t[1], methods.index(t[0]))):
        runs = sum(1 for r in group if (r.method, r.compression) == (m, c))
        counts = " and ".join(f"{st} {failed[(m, c)].count(st)}/{runs}" for st in sorted(set(failed[(m, c)])))
        parts.append(f"{METHOD_TITLES.get(m, m)} at {compression_label(c, mode)} {counts}")
    return (
        "Runs not ok (collapsed: no path from input to output; untrainable: connected, but at chance after "
        "training): " + ", ".join(parts) + "."
    )


def compare(
    results_path: str | Path,
    out_dir: str | Path,
    *,
    model: str | None = None,
    dataset: str | None = None,
    layer_compression: float | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write the at-init sweep tables, curves and per-layer tables, and the budget runs' accuracy vs cost.

    Args:
        results_path: The results CSV.
        out_dir: Output folder (created); ``index.md`` lists everything written.
        model: Only this model (all when None).
        dataset: Only this dataset (all when None).
        layer_compression: Compression of the per-layer tables (default: 10x / 10^1 when run).
        plots: Draw the PNG figures (matplotlib, Agg backend).

    Returns:
        The paths written, ``index.md`` last.

    Raises:
        HwpruneError: When the store holds neither a sweep row nor a budget run with accuracy matching the filters.
    """
    records = ResultsStore(results_path).records()

    def wanted(r) -> bool:
        return (model is None or r.model == model) and (dataset is None or r.dataset == dataset)

    rows = [r for r in sweep_rows(records) if wanted(r)]
    budgets = [r for r in budget_rows(records) if wanted(r)]
    if not rows and not budgets:
        raise HwpruneError(
            f"no prune-at-init sweep rows and no budget runs with accuracy in {results_path}"
            + (f" for model {model}" if model else "")
            + (f" on {dataset}" if dataset else "")
            + ": run hwprune prune-at-init, or hwprune prune with --data, first"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    index: list[str] = [
        f"# Pruning results\n\nFrom `{results_path}` ({len(rows)} prune-at-init runs, {len(budgets)} budget runs).\n"
    ]
    written += write_budget_tables(budgets, out, plots, index, _slug)
    long_rows: list[list] = []

    groups: dict[tuple[str, str, str], list[SweepRow]] = defaultdict(list)
    for r in rows:
        groups[(r.model, r.dataset, r.mode)].append(r)

    for (mdl, ds, mode), group in sorted(groups.items()):
        prefix = _slug(f"{mdl}_{ds}_{mode}")
        compressions = sorted({r.compression for r in group})
        methods = ordered_methods(r.method for r in group)
        seeds = sorted({r.seed for r in group if r.seed is not None})
        index.append(
            f"## {mdl} on {ds} (compression mode: {mode})\n\nSeeds: {', '.join(map(str, seeds)) or '-'}; "
            "cells are mean ± std (sample std) over seeds when several.\n"
        )
        not_ok = _runs_not_ok(group, methods, mode)
        if not_ok:
            index.append(not_ok + "\n")
        for name, metric in METRICS.items():
            cells = aggregate(group, metric)
            if not cells:
                continue
            table = markdown_table(cells, compressions, methods, mode, metric.fmt)
            md = out / f"{prefix}_{name}.md"
            title = f"{metric.title} ({metric.unit}) of {mdl} on {ds}"
            md.write_text(f"### {title}\n\n{table}\n")
            wide = out / f"{prefix}_{name}.csv"
            header = ["compression"] + [f"{m}_{suffix}" for m in methods for suffix in ("mean", "std", "n")]
            body = []
            for c in compressions:
                line: list = [f"{c:g}"]
                for m in methods:
                    cell = cells.get((c, m))
                    line += [f"{cell.mean:.6g}", f"{cell.std:.6g}", cell.n] if cell else ["", "", 0]
                body.append(line)
            _write_csv(wide, header, body)
            for (c, m), cell in sorted(cells.items()):
                long_rows.append([mdl, ds, mode, f"{c:g}", m, name, metric.unit, cell.mean, cell.std, cell.n])
            index.append(f"### {title}\n\n{table}\n\nFiles: [{md.name}]({md.name}), [{wide.name}]({wide.name})")
            written += [md, wide]
            if plots:
                png = out / f"{prefix}_{name}.png"
                _plot_curves(png, cells, compressions, methods, mode, metric, title)
                written.append(png)
                index.append(f", [{png.name}]({png.name})\n\n![{title}]({png.name})\n")
            else:
                index.append("\n")

        written += _layer_tables(
            group, mdl, ds, mode, compressions, methods, layer_compression, out, prefix, plots, index
        )

    written += _architecture_tables(rows, layer_compression, out, plots, index)
    long_csv = out / "tables.csv"
    _write_csv(
        long_csv,
        ["model", "dataset", "compression_mode", "compression", "method", "metric", "unit", "mean", "std", "n"],
        long_rows,
    )
    written.append(long_csv)
    index.append("## Files\n")
    index += [f"- [{p.name}]({p.name})" for p in [*written, out / "index.md"]]
    index_path = out / "index.md"
    index_path.write_text("\n".join(index) + "\n")
    written.append(index_path)
    return written


def _mean_by_layer(rows: Sequence[SweepRow], attr: str, transform) -> dict[str, dict[str, float]]:
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        for layer, v in getattr(r, attr).items():
            per[r.method][layer].append(transform(float(v)))
    return {m: {layer: sum(v) / len(v) for layer, v in d.items()} for m, d in per.items()}


def _layer_tables(
    group, mdl, ds, mode, compressions, methods, layer_compression, out, prefix, plots, index
) -> list[Path]:
    c = layer_compression if layer_compression in compressions else default_layer_compression(compressions, mode)
    at = [r for r in group if r.compression == c]
    written: list[Path] = []
    label = compression_label(c, mode)
    for attr, name, unit, transform, fmt in (
        ("layer_density", "layer_sparsity", "sparsity %", lambda d: 100.0 * (1.0 - d), ".2f"),
        ("layer_flops", "layer_flops", "effective MFLOPs", lambda f: f * 1e-6, ".4f"),
    ):
        table = _mean_by_layer(at, attr, transform)
        if not table:
            continue
        order = [name for r in at for name in r.layer_order]
        layers: list[str] = [
            n for i, n in enumerate(order) if n not in order[:i] and any(n in t for t in table.values())
        ]
        for m in methods:
            layers += [layer for layer in table.get(m, {}) if layer not in layers]
        cols = [m for m in methods if m in table]
        lines = ["| Layer | " + " | ".join(METHOD_TITLES.get(m, m) for m in cols) + " |", "|---|" + "---|" * len(cols)]
        for layer in layers:
            vals = [f"{table[m][layer]:{fmt}}" if layer in table[m] else "-" for m in cols]
            lines.append(f"| {layer} | " + " | ".join(vals) + " |")
        title = f"Per-layer {unit} of {mdl} on {ds} at compression {label} (mean over seeds)"
        md = out / f"{prefix}_{name}.md"
        md.write_text(f"### {title}\n\n" + "\n".join(lines) + "\n")
        csv_path = out / f"{prefix}_{name}.csv"
        _write_csv(csv_path, ["layer", *cols], [[layer, *[table[m].get(layer, "") for m in cols]] for layer in layers])
        written += [md, csv_path]
        index.append(
            f"### {title}\n\n"
            + "\n".join(lines)
            + f"\n\nFiles: [{md.name}]({md.name}), [{csv_path.name}]({csv_path.name})"
        )
        if plots:
            png = out / f"{prefix}_{name}.png"
            _plot_layers(png, {m: table[m] for m in cols}, layers, unit, title)
            written.append(png)
            index.append(f", [{png.name}]({png.name})\n\n![{title}]({png.name})\n")
        else:
            index.append("\n")
    return written


def _architecture_tables(rows, layer_compression, out, plots, index) -> list[Path]:
    """Model x method top-1 at the per-layer compression, per (dataset, mode) holding several models."""
    written: list[Path] = []
    by: dict[tuple[str, str], list[SweepRow]] = defaultdict(list)
    for r in rows:
        by[(r.dataset, r.mode)].append(r)
    for (ds, mode), group in sorted(by.items()):
        models = sorted({r.model for r in group})
        if len(models) < 2:
            continue
        compressions = sorted({r.compression for r in group})
        c = layer_compression if layer_compression in compressions else default_layer_compression(compressions, mode)
        methods = ordered_methods(r.method for r in group)
        lines = [
            "| Model | " + " | ".join(METHOD_TITLES.get(m, m) for m in methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        for mdl in models:
            cells = aggregate([r for r in group if r.model == mdl and r.compression == c], METRICS["accuracy"])
            lines.append(
                f"| {mdl} | "
                + " | ".join(cells[(c, m)].format(".2f") if (c, m) in cells else "-" for m in methods)
                + " |"
            )
        title = f"Test accuracy (top-1, %) on {ds} at compression {compression_label(c, mode)}, by architecture"
        md = out / _slug(f"architectures_{ds}_{mode}.md")
        md.write_text(f"### {title}\n\n" + "\n".join(lines) + "\n")
        written.append(md)
        index.append(f"### {title}\n\n" + "\n".join(lines) + f"\n\nFile: [{md.name}]({md.name})\n")
    return written
