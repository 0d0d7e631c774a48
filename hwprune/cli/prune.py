"""`hwprune prune`: to a latency, FLOPs or params budget, decided on the shipped artifact."""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from hwprune import checks
from hwprune.cli.options import (
    check_importance,
    check_journal,
    check_source,
    data_options,
    journal_kept_if_measured,
    model_options,
    model_or_onnx,
    onnx_option,
    unstage,
)
from hwprune.cli.registry import Command, register
from hwprune.errors import HwpruneError, set_stage

# `hwprune prune` exit status when the budget is not met: the output is written, the verdict is not "met"
PRUNE_EXIT = {"missed": 1, "undecided": 3}
DEFAULT_PRUNE_MODEL = "resnet18"


def cmd_prune(args) -> None:
    from hwprune import workflow
    from hwprune.results import ResultsStore

    kind, target = _budget(args)
    lut_path = _prune_lut(args, kind)
    profiles = lut_path is not None and not lut_path.exists()
    with contextlib.ExitStack() as stack:
        if profiles:  # the journal lives where a rerun finds it (OUT or --lut's folder), not in the staging folder
            stack.enter_context(checks.created_dir(lut_path.parent))
            stack.enter_context(journal_kept_if_measured(lut_path.with_suffix(".journal.jsonl")))
        stage = stack.enter_context(checks.StagedDir(args.out))  # mask, ONNX: all moved into OUT at the end, or none
        source = args.model if args.onnx is None else args.onnx
        set_stage(f"building {source}")
        job = model_or_onnx(args)
        steps = "map, score, profile, solve, export" if profiles else "map, score, solve, export"
        set_stage(f"pruning {source} to the {kind} budget ({steps})")
        result = workflow.prune_to_budget(
            job,
            kind,
            target,
            stage.path,
            backend=args.backend,
            lut_path=lut_path,
            importance=args.importance,
            threads=args.threads,
            repeats=args.repeats,
            sessions=args.sessions,
            tolerance=args.tolerance,
            results=None,  # appended below, once the files are in place
            round_to=args.round_to,
            data=args.data,
            data_dir=args.data_dir,
            finetune_epochs=args.finetune_epochs,
            imp_samples=args.imp_samples,
            bn_samples=args.bn_samples,
            distill=args.distill,
            distill_temperature=args.distill_temperature,
            normalise=args.normalise,
        )
        set_stage(f"moving the outputs into {args.out}")
        unstage(result.outcome, stage)
        stage.commit()
    if args.results is not None and result.outcome is not None:
        ResultsStore(args.results).append(result.outcome.record)
    print(result.table())
    if not result.within_tolerance:  # the artifact is written, but the budget was not shown to be met
        print(f"hwprune: {result.advice() or result.headline()}", file=sys.stderr)
        return PRUNE_EXIT[result.status]
    return 0


def _budget(args) -> tuple[str, float]:
    chosen = [(k, getattr(args, k)) for k in ("latency", "flops", "params") if getattr(args, k) is not None]
    if not chosen:
        raise HwpruneError("`hwprune prune` needs one budget: --latency, --flops or --params (a ratio, e.g. 0.5)")
    if len(chosen) > 1:  # one from --config, one from the command line
        raise HwpruneError(
            f"`hwprune prune` takes one budget, got {' and '.join(f'--{k} {v:g}' for k, v in chosen)}: keep one"
        )
    return chosen[0]


def _prune_lut(args, kind: str) -> Path | None:
    """The LUT a latency budget uses: --lut (existing, or created with --lut-create) or OUT/lut.json."""
    if kind != "latency":
        return None
    return args.lut if args.lut is not None else args.out / "lut.json"


def _check_prune(args) -> None:
    from hwprune.latency.lut import LUT

    if args.onnx is None and args.model is None:
        args.model = DEFAULT_PRUNE_MODEL
    check_source(args)
    if args.onnx is not None:
        from hwprune.graph_mapper.onnx_mapper import check_onnx_importance

        check_onnx_importance(args.importance)
        from hwprune.latency.backends import BACKENDS, onnx_backends

        if not BACKENDS.get(args.backend).times_onnx:
            raise HwpruneError(
                f"--onnx is timed by a backend that runs ONNX: --backend {onnx_backends()} (got {args.backend})"
            )
        if args.finetune_epochs:
            raise HwpruneError("--finetune-epochs needs a PyTorch model: an ONNX file has no module to train")
    kind, target = _budget(args)
    checks.prune_settings(
        kind, target, args.threads, args.repeats, args.tolerance, args.round_to, args.finetune_epochs, args.sessions
    )
    checks.backend(args.backend)
    check_importance(args, args.importance)
    if args.finetune_epochs and args.data is None:
        raise HwpruneError("--finetune-epochs needs --data (digits works offline)")
    if args.finetune_epochs:
        from hwprune.data import dataset_kind
        from hwprune.data.text import NO_TRAINING

        if dataset_kind(args.data) == "text":
            raise HwpruneError(NO_TRAINING)
    checks.whole(args.bn_samples, "--bn-samples", 0, "training examples for BatchNorm re-estimation; 0: none")
    if not args.distill >= 0 or not args.distill_temperature > 0:
        raise HwpruneError("--distill is a weight >= 0 and --distill-temperature a temperature > 0")
    if args.distill and not args.finetune_epochs:
        raise HwpruneError("--distill weights the built-in fine-tuning: give --finetune-epochs (and --data)")
    checks.output_dir(args.out)
    if args.results is not None:
        checks.results_file(args.results)
    if kind != "latency":
        if args.lut is not None or args.lut_create:
            raise HwpruneError(f"--lut is for --latency budgets; a --{kind} budget is counted exactly: drop --lut")
        return
    lut_path = _prune_lut(args, kind)
    if lut_path.exists():
        checks.input_file(lut_path, "--lut", "LUT")
        LUT.load(lut_path).check(backend=args.backend, threads=args.threads)  # the rest once the model is mapped
        return
    if args.lut is not None and not args.lut_create:
        raise HwpruneError(
            f"--lut {args.lut} does not exist: give an existing LUT (hwprune profile-edges --out {args.lut}), "
            "or add --lut-create to profile into it"
        )
    if args.lut is not None:
        checks.output_file(args.lut, "--lut", "lut.json")
    journal = lut_path.with_suffix(".journal.jsonl")
    if journal.exists():  # an interrupted profile to resume: well-formed? (its settings are compared later)
        check_journal(journal, "--lut" if args.lut is not None else "--out")


def _prune_arguments(p: argparse.ArgumentParser) -> None:
    from hwprune.latency.backends import BACKENDS, DEFAULT_BACKEND, available_backends, onnx_backends
    from hwprune.latency.measurement import SESSIONS
    from hwprune.prune.budget import NORMALISATIONS
    from hwprune.prune.importance import CHANNEL_IMPORTANCES
    from hwprune.workflow.recovery import BN_SAMPLES

    model_options(p, DEFAULT_PRUNE_MODEL, or_onnx=True)
    onnx_option(p)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--latency", type=float, default=None, help="target latency ratio, e.g. 0.5")
    budget.add_argument("--flops", type=float, default=None, help="target conv/linear MACs ratio")
    budget.add_argument("--params", type=float, default=None, help="target parameter ratio")
    p.add_argument(
        "--backend",
        default=DEFAULT_BACKEND,
        help=f"where latency is measured: {', '.join(BACKENDS.names())} (default {DEFAULT_BACKEND}; available here: "
        f"{', '.join(available_backends())}); {onnx_backends()} time the shipped ONNX file, the others the "
        "compacted PyTorch model",
    )
    p.add_argument(
        "--lut",
        type=Path,
        default=None,
        help="edge-profile LUT from `hwprune profile-edges` (must exist unless --lut-create; default: profile "
        "into OUT/lut.json, reused and resumed from there)",
    )
    p.add_argument(
        "--lut-create",
        action="store_true",
        help="profile into --lut when that file does not exist (without it a missing --lut is an error)",
    )
    p.add_argument(
        "--importance",
        default="l1",
        choices=CHANNEL_IMPORTANCES.names(),
        help="channel importance (default l1); gradient-based ones need --data",
    )
    data_options(p)
    p.add_argument(
        "--finetune-epochs", type=int, default=0, help="fine-tune the pruned model on --data, images only (0: no)"
    )
    p.add_argument(
        "--bn-samples",
        type=int,
        default=BN_SAMPLES,
        help="with --data: re-estimate BatchNorm statistics of the pruned model on this many training examples "
        f"before any fine-tuning; top-1 of dense and pruned, before and after, goes to the row (default {BN_SAMPLES})",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="with --finetune-epochs: weight of the distillation term (soft targets of the dense model), "
        "loss = CE + W * T^2 * KL (default 0: plain fine-tuning; 1 is a common choice)",
    )
    p.add_argument("--distill-temperature", type=float, default=4.0, help="distillation temperature T (default 4)")
    p.add_argument("--threads", type=int, default=1, help="backend threads (default 1)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per measurement (default 30)")
    p.add_argument(
        "--sessions",
        type=int,
        default=SESSIONS,
        help=f"fresh session pairs (dense, pruned) a latency ratio is averaged over, timed in one interleaved run "
        f"(default {SESSIONS}; fresh sessions of one file time a few %% apart)",
    )
    p.add_argument("--tolerance", type=float, default=0.03, help="accepted relative error of the result (0.03)")
    p.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="keep channel counts multiples of this (default per backend: 16 on CPU, 8 on GPU; with --latency "
        "smaller groups stay whole, with --flops/--params it is halved for groups of fewer than 4 steps)",
    )
    p.add_argument(
        "--normalise",
        default=NORMALISATIONS[0],
        choices=NORMALISATIONS,
        help="how importance is compared across groups: cost (each group's total = its share of the budgeted cost), "
        "mean (each group's channels rescaled to a mean of 1), none (raw scores, global); default %(default)s",
    )
    p.add_argument("--out", type=Path, default=Path("out/prune"), help="output folder (default out/prune)")
    p.add_argument("--results", type=Path, default=Path("runs/results.csv"), help="results store to append to")


register(
    Command(
        "prune",
        "Prune to a budget: --latency/--flops/--params RATIO of the dense model. Latency is predicted from "
        "an edge profile (measured now unless --lut is given), then measured on --backend and corrected "
        "until within --tolerance. Writes mask.json, the verified compacted ONNX and a results row. "
        "--onnx prunes an ONNX file instead (timed, compacted and shipped as ONNX, on ort-cpu/ort-cuda).",
        _prune_arguments,
        cmd_prune,
        _check_prune,
        (),
    )
)
