"""Prune-at-init benchmarks, measured on this machine (CPU, torch threads set by --threads, default 1).

Writes to benchmarks/results/ (CSV + markdown twin each):
- scoring_speed.csv   model,method,seconds: one scoring pass of every registered scorer (SynFlow: also its 100-round
                      prune, ``synflow_100rounds``) on the reference pruning batch (10 x num_classes samples,
                      batches of 256) of random inputs; vgg16 (CIFAR built-in model, 32 px, 10 classes) and
                      torchvision resnet50 with 10 classes at --resnet-size px (224 by default, as the references).
- layer_collapse.csv  model,method,max_compression_without_collapse: vgg16 at init, compressions
                      10^0.5 .. 10^4 in exponent steps of 0.25 (global masking). Single-shot scorers are
                      scored once and thresholded at every compression; SynFlow is re-run per compression
                      with --collapse-synflow-rounds rounds (100 in the paper).
(digits_sweep.csv and the fidelity tables come from benchmarks/prune_at_init_fidelity.py.)

    python benchmarks/pruning.py [--only scoring,collapse] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from hwprune.at_init.sweep import SWEEP_PRUNERS
from hwprune.models import get_model
from hwprune.prune.scorers import WEIGHT_SCORERS, score_weights
from hwprune.prune.weight_masking import density_from, detect_collapse, mask_from_scores, prune_weights

RESULTS = Path(__file__).parent / "results"
# the five classic at-init methods first, then the GCS family (gcs-grasp/gcs-snip: GCS presets mirroring those two)
SCORING_ORDER = list(SWEEP_PRUNERS) + [m for m in WEIGHT_SCORERS.names() if m not in SWEEP_PRUNERS]


# the columns the issue names (read by checks); the markdown twin shows every column
CSV_COLUMNS = {
    "scoring_speed": ["model", "method", "seconds"],
    "layer_collapse": ["model", "method", "max_compression_without_collapse"],
}


def _write(df: pd.DataFrame, name: str, note: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    df[CSV_COLUMNS.get(name, list(df.columns))].to_csv(RESULTS / f"{name}.csv", index=False)
    (RESULTS / f"{name}.md").write_text(f"# {name}\n\n{note}\n\n{df.to_markdown(index=False)}\n")
    print(df.to_string(index=False))


def _batches(channels: int, size: int, num_classes: int = 10, per_class: int = 10) -> list:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(num_classes * per_class, channels, size, size, generator=gen)
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(y), 256)]


def scoring_speed(resnet_size: int) -> None:
    rows = []
    for model_name, size in (("vgg16", 32), ("resnet50", resnet_size)):
        torch.manual_seed(0)
        model = get_model(model_name, num_classes=10, in_channels=3, input_size=size)
        batches = _batches(3, size)
        for method in SCORING_ORDER:
            start = time.perf_counter()
            score_weights(method, model, batches)
            rows.append({"model": model_name, "input": size, "method": method, "seconds": time.perf_counter() - start})
            print(rows[-1], flush=True)
        start = time.perf_counter()
        prune_weights(model, "synflow", batches, 0.1, rounds=100)
        rows.append(
            {"model": model_name, "input": size, "method": "synflow_100rounds", "seconds": time.perf_counter() - start}
        )
        print(rows[-1], flush=True)
    note = (
        f"One scoring pass per scorer on 100 random samples (10 classes x 10), CPU, {torch.get_num_threads()} "
        f"thread(s). vgg16 = CIFAR seed VGG16 at 32 px; resnet50 = torchvision ResNet-50 with 10 classes at "
        f"{resnet_size} px{' (not 224 px: too slow on 2 shared cores)' if resnet_size != 224 else ''}. "
        "synflow_100rounds = the full 100-round SynFlow prune to density 0.1 (scoring + masking)."
    )
    _write(pd.DataFrame(rows), "scoring_speed", note)


def layer_collapse(synflow_rounds: int) -> None:
    exponents = [0.5 + 0.25 * i for i in range(15)]  # 10^0.5 .. 10^4
    torch.manual_seed(0)
    model = get_model("vgg16", num_classes=10, in_channels=3, input_size=32)
    batches = _batches(3, 32)
    rows = []
    for method in SWEEP_PRUNERS:
        start = time.perf_counter()
        best = None
        scores = score_weights(method, model, batches) if method != "synflow" else None
        for e in exponents:
            d = density_from(e, "exponent")
            if scores is not None:
                mask = mask_from_scores(scores, d)
            else:
                mask = prune_weights(model, "synflow", batches, d, rounds=synflow_rounds)
            if detect_collapse(mask):
                break
            best = e
        rows.append(
            {
                "model": "vgg16",
                "method": method,
                "max_compression_without_collapse": "none" if best is None else f"10^{best:g}",
                "max_exponent": best,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(rows[-1], flush=True)
    note = (
        "CIFAR VGG16 (32 px, 10 classes) at initialization, global masking, pruning data 100 random samples; "
        "compressions 10^0.5 .. 10^4 in exponent steps of 0.25, scanned upwards until the first collapse "
        f"(a prunable layer keeping no weight). SynFlow with {synflow_rounds} rounds per compression"
        f"{' (the paper uses 100; fewer to fit the time on 2 cores)' if synflow_rounds != 100 else ''}."
    )
    _write(pd.DataFrame(rows), "layer_collapse", note)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="scoring,collapse")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resnet-size", type=int, default=224)
    p.add_argument("--collapse-synflow-rounds", type=int, default=100)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    only = set(args.only.split(","))
    if "scoring" in only:
        scoring_speed(args.resnet_size)
    if "collapse" in only:
        layer_collapse(args.collapse_synflow_rounds)


if __name__ == "__main__":
    main()
