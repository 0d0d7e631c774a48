"""Model-dependent plots of prune-at-init sweeps (imports torch): per-layer weight histograms.

The tables and curves are torch-free (:mod:`hwprune.results.compare`); the histograms need the
trained weights each run saved (``tools/prune_at_init.py --save-weights``, recorded in the row's
``artifacts.weights``). Only kept (unmasked) weights are drawn: the pruned ones are exactly zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from hwprune.results.compare import METHOD_TITLES, SweepRow, compression_label, ordered_methods

__all__ = ["weight_histograms"]


def _load(path: str) -> dict[str, torch.Tensor] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError):
        return None


def weight_histograms(rows: Sequence[SweepRow], out_dir: str | Path, bins: int = 50) -> list[Path]:
    """One PNG per (model, dataset, mode, compression) with saved weights: a panel per layer, a histogram per method.

    Args:
        rows: Sweep rows (from :func:`hwprune.results.compare.sweep_rows`), usually at one compression.
        out_dir: Output folder.
        bins: Histogram bins.

    Returns:
        The PNG paths written (none when no row has saved weights).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple, dict[str, SweepRow]] = {}
    for r in rows:
        if r.artifacts.get("weights") and Path(r.artifacts["weights"]).is_file():
            groups.setdefault((r.model, r.dataset, r.mode, r.compression), {}).setdefault(r.method, r)
    written = []
    for (mdl, ds, mode, c), by_method in sorted(groups.items()):
        states = {m: _load(by_method[m].artifacts["weights"]) for m in ordered_methods(by_method)}
        states = {m: s for m, s in states.items() if s is not None}
        if not states:
            continue
        layers = [n for n in next(iter(by_method.values())).layer_density if n in next(iter(states.values()))]
        cols = min(4, len(layers))
        nrows = math.ceil(len(layers) / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
        for ax, layer in zip(axes.flat, layers, strict=False):
            for m, state in states.items():
                w = state[layer].detach().float().reshape(-1)
                w = w[w != 0]
                if w.numel():
                    ax.hist(w.numpy(), bins=bins, histtype="step", label=METHOD_TITLES.get(m, m))
            ax.set_title(layer, fontsize=8)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(layers) :]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=6)
        fig.suptitle(f"Kept weights after training: {mdl} on {ds} at {compression_label(c, mode)}", fontsize=9)
        fig.tight_layout()
        path = out / f"{mdl}_{ds}_{mode}_{c:g}_weight_hist.png".replace("/", "_")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
