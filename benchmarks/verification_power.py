"""Verification power: does the production equivalence check catch deliberately wrong compactions?

For every zoo model (built-in models, the torchvision classification zoo, the timm set of
tests/test_zoo_equivalence.py), built with its init weights as a user gets it, a random 40 % channel
mask is compacted by each negative control of tests/test_verification_power.py (permuted kept
entries of one per-channel vector, one consumer with the wrong input channels, noise in every shrunk
tensor, the first k entries of every per-channel vector) and handed to the production check
(:func:`hwprune.export.pipeline.compact_and_verify`, on the user's weights and a randomised copy).
Writes benchmarks/results/verification_power.csv (model, controls, caught, min_caught_diff) and a
.md with more columns; goal: caught == controls on every model.

    python benchmarks/verification_power.py [--models resnet18,vit_b_16] [--size 64] [--max-params 250e6]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the controls live with their tests

from hwprune.errors import EquivalenceError, VerificationError  # noqa: E402
from hwprune.export.pipeline import compact_and_verify, prove_compaction, randomized_graph  # noqa: E402
from hwprune.graph_mapper import build_channel_graph  # noqa: E402
from hwprune.models import get_model  # noqa: E402
from hwprune.models.zoo import UNTRACEABLE, zoo_cases  # noqa: E402
from tests.test_verification_power import (  # noqa: E402
    CONTROLS,
    NotApplicable,
    control_changes_model,
    init_case,
    random_mask,
)

RESULTS = Path(__file__).parent / "results"
CSV_COLUMNS = ["model", "controls", "caught", "min_caught_diff"]


def param_count(qualified: str, size: int) -> int:
    """Parameters of the model (on the meta device where the builder allows it: no memory, no init)."""
    try:
        with torch.device("meta"):
            model = get_model(qualified, num_classes=10, input_size=size)
    except Exception:  # some builders compute on tensors at construction time
        model = get_model(qualified, num_classes=10, input_size=size)
    return sum(p.numel() for p in model.parameters())


def power_row(qualified: str, size: int, max_params: float) -> dict:
    row = dict(model=qualified, input=size, controls=0, caught=0, min_caught_diff=None)
    row.update(caught_on_user_weights=0, not_applicable="", missed="", seconds=None, note="")
    start = time.perf_counter()
    params = param_count(qualified, size)
    row["params_M"] = round(params / 1e6, 1)
    if params > max_params:
        row["note"] = f"skipped: {params / 1e6:.0f}M parameters > {max_params / 1e6:.0f}M"
        return row
    try:
        model, x = init_case(qualified, size)
        graph = build_channel_graph(model, x, qualified)
        mask = random_mask(graph)
        if not mask.pruned_groups():
            row["note"] = "the random mask prunes nothing"
            return row
        proof = prove_compaction(model, graph, mask, x)  # the right compaction must pass
        if proof.diff is None:
            row["note"] = "inexact groups pruned: no equivalence to check"
            return row
        right = (proof.diff, proof.random_diff)
        del proof  # the compacted copies: memory for the controls' checks
        random_graph = randomized_graph(graph)
        caught, not_applicable, missed = [], [], []
        for name, control in CONTROLS.items():
            try:
                if not control_changes_model(control, graph, mask, random_graph):
                    not_applicable.append(name)
                    continue
            except NotApplicable:
                not_applicable.append(name)
                continue
            try:
                compact_and_verify(model, graph, mask, x, compactor=control)
                missed.append(name)
            except EquivalenceError as exc:
                caught.append((name, exc.diff, "on randomised weights" not in str(exc)))
            except VerificationError as exc:  # caught, but not by a comparison: say so
                caught.append((name, float("nan"), False))
                row["note"] += f"{name}: {str(exc)[:120]}; "
            gc.collect()  # several copies of a large model per check
        del random_graph
        diffs = [d for _, d, _ in caught if d == d]
        row.update(
            controls=len(caught) + len(missed),
            caught=len(caught),
            min_caught_diff=float(f"{min(diffs):.3g}") if diffs else None,
            caught_on_user_weights=sum(user for _, _, user in caught),
            not_applicable=",".join(not_applicable),
            missed=",".join(missed),
        )
        row["note"] += f"check on the right compaction: {right[0]:.1e} (yours), {right[1]:.1e} (randomised)"
    except Exception as exc:  # a benchmark records failures instead of stopping
        row["note"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    finally:
        row["seconds"] = round(time.perf_counter() - start, 1)
        gc.collect()
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=None, help="comma-separated subset of the zoo (bare or qualified)")
    parser.add_argument("--size", type=int, default=None, help="input side where a model's zoo size is smaller")
    parser.add_argument("--max-params", type=float, default=250e6, help="skip larger models (noted)")
    parser.add_argument("--out", default="verification_power", help="file stem under benchmarks/results/")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [(q, size) for q, size in zoo_cases() if q not in UNTRACEABLE]
    if args.models:
        wanted = set(args.models.split(","))
        cases = [c for c in cases if c[0].split(":")[-1] in wanted or c[0] in wanted]
    command = "python benchmarks/verification_power.py " + " ".join(sys.argv[1:])
    rows = []
    for qualified, zoo_size in tqdm(cases, desc="verification power", unit="model"):
        size = max(args.size, zoo_size or 0) if args.size else zoo_size
        rows.append(power_row(qualified, size or 32, args.max_params))
        tqdm.write(str(rows[-1]))
    frame = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    frame[CSV_COLUMNS].to_csv(RESULTS / f"{args.out}.csv", index=False)
    checked = frame[frame.controls > 0]
    full = int((checked.controls == checked.caught).sum())
    header = (
        f"# Verification power: `{command.strip()}` (torch {torch.__version__}, 1 thread, OMP_NUM_THREADS=1, "
        f"random 40 % channel mask (seed 1), batch 2, init weights, tolerance 1e-4, check seed 0)\n\n"
        f"{int(frame.caught.sum())}/{int(frame.controls.sum())} negative controls caught over {len(checked)} "
        f"models checked; caught == controls on {full}/{len(checked)}; {len(frame) - len(checked)} models not "
        "checked (see note).\n\n"
        "Each control is a deliberately wrong compaction (tests/test_verification_power.py): "
        "permuted_vector (kept entries of one per-channel vector rolled by one), shifted_consumer_slice "
        "(one conv/linear input axis keeps the first k input channels instead of the kept ones), noise_filled "
        "(every shrunk tensor replaced by noise of its own scale), first_rows_of_vectors (every per-channel "
        "vector keeps its first k entries: issue #10's example). A control counts only where it changes the "
        "compacted model (on randomised values; not_applicable otherwise). The production check "
        "(compact_and_verify) compares on the user's init weights first (float32, tolerance 1e-4), then on a "
        "randomised, layer-calibrated copy compacted with the same graph and mask (float64, tolerance 1e-9), "
        "and must raise. min_caught_diff: the smallest relative difference, over the caught controls, of the "
        "comparison that raised (a value just above 1e-4 is a catch on the init weights and says nothing of the "
        "randomised copy's margin); caught_on_user_weights: controls caught already on the init weights, the "
        "rest needed the randomised copy. note: the check's own result on the right compaction (rounding "
        "floor). input: the input side (the zoo's test sizes unless --size). Init weights seeded (seed 0)."
    )
    (RESULTS / f"{args.out}.md").write_text(f"{header}\n\n{frame.to_markdown(index=False)}\n")
    print(header.splitlines()[2])


if __name__ == "__main__":
    main()
