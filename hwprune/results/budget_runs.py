"""Budget runs in the results store (``prune --latency/--flops/--params`` with data): accuracy against cost.

A user comparing methods asks which one keeps the most accuracy at the latency they need; these rows hold
the answer (the shipped file's measured latency ratio, the exact FLOPs and params ratios, dense and final
top-1), so ``hwprune compare`` tabulates and plots them beside the at-init sweeps. Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hwprune.results.schema import RunRecord

BUDGET_KINDS = ("latency", "flops", "params")


@dataclass(frozen=True)
class BudgetRow:
    """One budget run: what was asked, what the shipped model costs, and the accuracy it kept."""

    model: str
    dataset: str
    method: str
    target_kind: str
    target: float
    latency_ratio: float | None  # shipped over dense, measured (None when not timed)
    flops_ratio: float | None
    params_ratio: float | None
    top1_dense: float | None
    top1: float  # after recovery (BatchNorm re-estimation, fine-tuning), what ships
    status: str


def _ratio(after, before) -> float | None:
    return after / before if after is not None and before else None


def budget_rows(records: Iterable[RunRecord]) -> list[BudgetRow]:
    """The store's budget runs that measured accuracy (``prune`` given data); other rows are skipped."""
    rows = []
    for r in records:
        if r.target_kind not in BUDGET_KINDS or r.accuracy_top1 is None or r.target_value is None:
            continue
        extra = r.extra_dict()
        latency = extra.get("measured_ratio") if r.target_kind == "latency" else None
        rows.append(
            BudgetRow(
                r.model,
                r.dataset,
                r.method,
                r.target_kind,
                float(r.target_value),
                latency if latency is not None else _ratio(r.latency_ms_median, r.latency_before_ms),
                _ratio(r.flops, r.flops_before),
                _ratio(r.params, r.params_before),
                extra.get("top1_dense"),
                float(r.accuracy_top1),
                str(extra.get("status", "")),
            )
        )
    return rows


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def budget_table(rows: list[BudgetRow]) -> str:
    """Markdown, one line per run, by budget kind then target then method."""
    lines = [
        "| method | budget | latency ratio | FLOPs ratio | params ratio | top-1 dense (%) | top-1 (%) | status |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.target_kind, r.target, r.method)):
        dense = None if r.top1_dense is None else 100 * r.top1_dense
        lines.append(
            f"| {r.method} | {r.target_kind} {r.target:g} | {_cell(r.latency_ratio, '.3f')} | "
            f"{_cell(r.flops_ratio, '.3f')} | {_cell(r.params_ratio, '.3f')} | {_cell(dense, '.2f')} | "
            f"{100 * r.top1:.2f} | {r.status} |"
        )
    return "\n".join(lines)


def _plot(path: Path, rows: list[BudgetRow], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for method in sorted({r.method for r in rows}):
        pts = sorted((r.latency_ratio, 100 * r.top1) for r in rows if r.method == method)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    dense = [r.top1_dense for r in rows if r.top1_dense is not None]
    if dense:
        ax.axhline(100 * max(dense), color="grey", linestyle="--", linewidth=1, label="dense")
    ax.set(title=title, xlabel="measured latency ratio (shipped / dense)", ylabel="top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_budget_tables(rows: list[BudgetRow], out: Path, plots: bool, index: list[str], slug) -> list[Path]:
    """Per model and dataset: a markdown table and, where latency was measured, accuracy vs latency (PNG)."""
    written: list[Path] = []
    for model, dataset in sorted({(r.model, r.dataset) for r in rows}):
        group = [r for r in rows if (r.model, r.dataset) == (model, dataset)]
        title = f"Budget runs of {model} on {dataset}: accuracy against measured cost"
        md = out / f"{slug(f'{model}_{dataset}')}_budget.md"
        table = budget_table(group)
        md.write_text(f"### {title}\n\n{table}\n")
        written.append(md)
        index.append(f"## {title}\n\n{table}\n\nFile: [{md.name}]({md.name})")
        timed = [r for r in group if r.latency_ratio is not None]
        if plots and timed:
            png = out / f"{slug(f'{model}_{dataset}')}_accuracy_vs_latency.png"
            _plot(png, timed, f"{model} on {dataset}")
            written.append(png)
            index.append(f", [{png.name}]({png.name})\n\n![{title}]({png.name})\n")
        else:
            index.append("\n")
    return written
