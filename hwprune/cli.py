"""`hwprune <subcommand>`: one entry point over the library.

Options may also come from a JSON/YAML file (`--config FILE`); the command line overrides it.

Every option and input file is checked before any work starts (:mod:`hwprune.checks`); bad input
gets one line on stderr (``hwprune: error: ...``, what is wrong and what to do) and exit status 2,
an unexpected internal error one line naming the stage and exit status 1 (the traceback with the
global ``--debug``). Commands that write a folder (demo, prune) write it whole or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from hwprune import checks
from hwprune.errors import HwpruneError, Interrupted, OneLineParser, current_stage, first_line, set_stage

DEMO_OUT = Path("out/demo")
# `hwprune prune` exit status when the budget is not met: the output is written, the verdict is not "met"
PRUNE_EXIT = {"missed": 1, "undecided": 3}


DEFAULT_PRUNE_MODEL = "resnet18"


def _model_options(p: argparse.ArgumentParser, default_model: str | None = None, or_onnx: bool = False) -> None:
    """--model and what builds it; ``or_onnx``: --onnx may replace it, so ``default_model`` applies only without."""
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None if or_onnx else default_model,
        help=("(required) " if default_model is None else f"(default {default_model}) ")
        + "zoo name (see `hwprune models`); prefix torchvision:/timm:/seed: to disambiguate",
    )
    g.add_argument("--input-size", type=int, default=None, help="square input side in pixels (default: the model's)")
    g.add_argument("--batch", type=int, default=1, help="batch of the example input (default 1)")
    g.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    g.add_argument("--in-channels", type=int, default=None, help="input channels (default: the model's)")
    g.add_argument("--seed", type=int, default=0, help="seed for the example input and random scores")
    g.add_argument(
        "--weights",
        default=None,
        help="your trained weights: a .safetensors file, or a state dict / checkpoint saved with torch.save "
        "(read with weights_only=True: never an arbitrary pickle), or a torchvision weight name (DEFAULT, "
        "IMAGENET1K_V2) found in the local torch hub cache; nothing is downloaded (default: random weights)",
    )


def _onnx_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--onnx",
        type=Path,
        default=None,
        help="an ONNX file to work on instead of --model (no PyTorch model needed; importance l1, l2 or random)",
    )
    p.add_argument(
        "--input-shape",
        default=None,
        help="with --onnx: fix the input shape, e.g. 1,3,224,224 (default: the file's; a dynamic batch maps at 1, "
        "and channels that only a shape computed from it reaches stay frozen)",
    )


def _mask_options(p: argparse.ArgumentParser, ratio: float = 0.5) -> None:
    from hwprune.prune.importance import CHANNEL_IMPORTANCES

    p.add_argument(
        "--method",
        default="l1",
        choices=CHANNEL_IMPORTANCES.names(),
        help="channel importance (default l1: L1 norm of each channel's weights, summed over its group); "
        "gradient-based ones (taylor, fisher, grasp, ...) need --data",
    )
    p.add_argument(
        "--ratio",
        type=float,
        default=ratio,
        help=f"share of channels removed from every prunable group (default {ratio})",
    )
    _data_options(p)


def _data_options(p: argparse.ArgumentParser) -> None:
    from hwprune import workflow

    p.add_argument("--data", default=None, help="dataset for gradient-based importances (digits works offline)")
    p.add_argument("--data-dir", default=None, help="folder of file-based datasets (see `hwprune datasets`)")
    p.add_argument(
        "--imp-samples",
        type=int,
        default=workflow.IMPORTANCE_SAMPLES,
        help=f"training examples gradient-based importances average over, in mini-batches of 128 "
        f"(default {workflow.IMPORTANCE_SAMPLES}, as seed 001)",
    )


def _build_parser() -> argparse.ArgumentParser:
    import hwprune
    from hwprune.latency.backends import BACKENDS, DEFAULT_BACKEND, available_backends, onnx_backends
    from hwprune.prune.importance import CHANNEL_IMPORTANCES
    from hwprune.workflow.recovery import BN_SAMPLES

    parser = OneLineParser(
        prog="hwprune",
        description="Hardware-aware pruning: map channel groups, prune, compact, export verified ONNX, measure.",
        epilog="The same from Python, on your own module and weights (" + hwprune.__doc__.split("(", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="(before COMMAND) on an unexpected internal error, print its full traceback (also HWPRUNE_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in DELEGATED.items():
        sub.add_parser(name, help=help_, add_help=False)

    def add(name: str, help_: str, **kw) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, **kw)
        p.add_argument("--config", default=None, help="JSON or YAML file of option values (CLI overrides)")
        return p

    p = add(
        "demo",
        "Uniform pruning: map resnet18, remove half the channels of every "
        "prunable group by L1 norm, compact, export and verify ONNX, time it in onnxruntime.",
    )
    _model_options(p, "resnet18")
    _mask_options(p)
    p.add_argument("--out", type=Path, default=DEMO_OUT, help=f"output folder (default {DEMO_OUT})")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model (default 30)")

    p = add("models", "List model names.")
    p.add_argument("--source", default="seed", choices=["seed", "torchvision", "timm", "all"])

    add("datasets", "List datasets (none download; file-based ones read --data-dir).")

    p = add("map", "Map a model's channel groups and print them.")
    _model_options(p)
    _onnx_option(p)
    p.add_argument("--explain", action="store_true", help="print every group with its slices")
    p.add_argument("--json", type=Path, default=None, help="also write the groups as JSON to this file")

    p = add("mask", "Compute a channel mask and save it as JSON.")
    _model_options(p)
    _onnx_option(p)
    _mask_options(p)
    p.add_argument("--out", type=Path, default=None, help="(required) mask file to write (.json)")

    p = add("export", "Compact a model with a mask, export ONNX, verify it in onnxruntime, report.")
    _model_options(p)
    _onnx_option(p)
    p.add_argument("--mask", type=Path, default=None, help="mask file from `hwprune mask` (default: compute one)")
    _mask_options(p)
    p.add_argument("--out", type=Path, default=None, help="(required) ONNX file to write")
    p.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    p.add_argument("--results", type=Path, default=None, help="append a results row to this CSV")
    p.add_argument("--latency", action="store_true", help="also time dense vs pruned ONNX in onnxruntime")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for --latency (default 1)")

    p = add(
        "prune",
        "Prune to a budget: --latency/--flops/--params RATIO of the dense model. Latency is predicted from "
        "an edge profile (measured now unless --lut is given), then measured on --backend and corrected "
        "until within --tolerance. Writes mask.json, the verified compacted ONNX and a results row. "
        "--onnx prunes an ONNX file instead (timed, compacted and shipped as ONNX, on ort-cpu/ort-cuda).",
    )
    _model_options(p, DEFAULT_PRUNE_MODEL, or_onnx=True)
    _onnx_option(p)
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
    _data_options(p)
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model on --data (0: no)")
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
    p.add_argument("--tolerance", type=float, default=0.03, help="accepted relative error of the result (0.03)")
    p.add_argument(
        "--round-to",
        type=int,
        default=None,
        help="keep channel counts multiples of this (default: for --latency per backend, 16 on CPU and 8 on GPU, "
        "where smaller groups stay whole; for --flops/--params 1)",
    )
    p.add_argument("--out", type=Path, default=Path("out/prune"), help="output folder (default out/prune)")
    p.add_argument("--results", type=Path, default=Path("runs/results.csv"), help="results store to append to")

    p = add(
        "profile-edges",
        "Edge profile: time the whole network with each channel group at a fraction of its channels, against "
        "the dense model; writes a LUT (JSON + CSV). A journal makes an interrupted run resume.",
    )
    _model_options(p, "resnet18")
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"latency backend (default {DEFAULT_BACKEND})")
    p.add_argument("--points", default="0.5", help="kept fractions per group, comma-separated (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="backend threads (default 1)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (default 20)")
    p.add_argument("--out", type=Path, default=Path("out/lut.json"), help="LUT file (default out/lut.json)")
    p.add_argument("--journal", type=Path, default=None, help="journal (default: next to --out)")
    p.add_argument("--round-to", type=int, default=16, help="profiled channel counts are multiples of this (16)")
    p.add_argument(
        "--passes",
        type=int,
        default=1,
        help="passes over all groups; each point keeps the median saving, averaging the host's drift (default 1)",
    )
    p.add_argument(
        "--calibration-masks",
        type=int,
        default=16,
        help="random whole-network masks measured after the groups; the latency model learns interactions "
        "from them (default 16)",
    )

    p = add(
        "latency",
        "Latency tools. `latency validate`: measure N random masks (aligned like the LUT) against the dense "
        "model and report how well the LUT's latency model predicts them.",
    )
    p.add_argument("action", choices=["validate"])
    _model_options(p, "resnet18")
    p.add_argument("--lut", type=Path, default=None, help="(required) LUT from `hwprune profile-edges`")
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"latency backend (default {DEFAULT_BACKEND})")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--masks", type=int, default=30, help="random masks to measure (default 30)")
    p.add_argument("--repeats", type=int, default=20)

    p = add(
        "prune-train",
        "Prune+train rounds (the gradient-flow framework): --prune-percent of the channels removed over "
        "--n-rounds, each round scoring, pruning, physically compacting and training; then the verified ONNX "
        "of the result. Checkpoints every round in --out: rerun the same command to resume.",
    )
    _model_options(p, "resnet20")
    p.add_argument("--data", default="digits", help="dataset (default digits, offline; imagefolder with --data-dir)")
    p.add_argument("--data-dir", default=None, help="folder of file-based datasets")
    p.add_argument("--pruning-type", default="mag_based", choices=CHANNEL_IMPORTANCES.names(), help="importance")
    p.add_argument("--prune-percent", type=float, default=75.0, help="percent of channels removed (default 75)")
    p.add_argument("--n-rounds", type=int, default=25, help="rounds the pruning is divided over (default 25)")
    p.add_argument("--thresholds", default=None, help="cumulative percent per round, e.g. '[10,50,80]'")
    p.add_argument("--warmup-epochs", type=int, default=0, help="training epochs before pruning (default 0)")
    p.add_argument("--epochs-per-round", type=int, default=1, help="training epochs after each round (default 1)")
    p.add_argument("--final-epochs", type=int, default=0, help="training epochs after the last round (default 0)")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate of warm-up and final training (0.1)")
    p.add_argument("--lr-prune", type=float, default=0.1, help="learning rate during the pruning rounds (0.1)")
    p.add_argument("--moment", type=float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument("--preserve-moment", action="store_true", help="carry kept channels' momentum through pruning")
    p.add_argument("--track-batches", type=int, default=0, help="track importance over N mini-batches (0: no)")
    p.add_argument("--alpha", type=float, default=0.8, help="exponential-average factor of tracking (0.8)")
    p.add_argument("--imp-samples", type=int, default=2560, help="examples untracked importance uses (2560)")
    p.add_argument("--grasp-T", type=float, default=200.0, help="temperature of grasp/grad_preserve (200)")
    p.add_argument("--T", type=float, default=1.0, help="training temperature, logits / T (default 1)")
    p.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    p.add_argument("--track-stats", action="store_true", help="print train/test accuracy of every epoch")
    p.add_argument("--out", type=Path, default=None, help="(required) run folder: checkpoints, ONNX")
    p.add_argument("--results", type=Path, default=None, help="append a results row to this CSV")

    p = add("flops", "FLOPs and params per layer (fvcore; 1 multiply-add = 1 FLOP).")
    _model_options(p)
    p.add_argument("--top", type=int, default=20, help="layers to list (default 20)")

    p = add(
        "evaluate",
        "Accuracy (top-1/top-5 per split), params, FLOPs and compression of a saved model: a zoo model with "
        "--weights, pruned by --mask (compacted first; --weights may then be the pruned model's own weights), "
        "or an ONNX file run in onnxruntime (--onnx: the file you deploy).",
    )
    _model_options(p)
    _onnx_option(p)
    p.add_argument("--mask", type=Path, default=None, help="channel mask (mask.json from mask/prune) to apply")
    p.add_argument("--data", default=None, help="(required) dataset to evaluate on (digits works offline)")
    p.add_argument("--data-dir", default=None, help="folder of file-based datasets (imagefolder: train/, val/, test/)")
    p.add_argument("--splits", default="test", help="comma-separated splits to evaluate (default test; train,test)")
    p.add_argument("--batch-size", type=int, default=128, help="evaluation batch (default 128)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for --onnx (default 1)")

    p = add("results", "Show the results store as a table.")
    p.add_argument("--path", type=Path, default=Path("runs/results.csv"))
    p.add_argument("--last", type=int, default=20)
    return parser


REQUIRED = {
    "map": ["model"],
    "mask": ["model", "out"],
    "export": ["model", "out"],
    "flops": ["model"],
    "evaluate": ["model", "data"],
    "prune-train": ["out"],
    "latency": ["lut"],
}


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse, fold in --config, then check required options (which a config may supply)."""
    args = _apply_config(parser, argv)
    missing = [
        f"--{k.replace('_', '-')}" + (" (or --onnx)" if k == "model" and hasattr(args, "onnx") else "")
        for k in REQUIRED.get(args.command, [])
        if getattr(args, k) is None and not (k == "model" and getattr(args, "onnx", None) is not None)
    ]
    if missing:
        raise HwpruneError(f"`hwprune {args.command}` needs {', '.join(missing)} (on the command line or in --config)")
    return args


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; values from --config become the defaults, converted and checked like the CLI's."""
    args = _parse_all(parser, argv)
    if not getattr(args, "config", None):
        return args
    path = Path(args.config)
    values = checks.read_config(path)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the chosen subcommand
    known = {a.dest: a for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}
    values = {k.replace("-", "_"): v for k, v in values.items() if k not in ("command", "config")}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise HwpruneError(
            f"--config {path}: unknown option(s) {', '.join(unknown)} for `hwprune {args.command}` "
            f"(see `hwprune {args.command} --help`)"
        )
    sub.set_defaults(**{k: checks.config_value(known[k], k, v, path) for k, v in values.items()})
    return _parse_all(parser, argv)


def _parse_all(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, naming the subcommand's --help when an option is unknown to it."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise HwpruneError(
            f"unrecognized arguments: {' '.join(extra)}; see `hwprune {args.command} --help` for its options"
        )
    return args


def _job(args):
    from hwprune import workflow

    if getattr(args, "data", None) and args.num_classes is None:  # the classifier must match its data
        from hwprune.data import dataset_info

        args.num_classes = dataset_info(args.data).num_classes

    return workflow.ModelInput.build(
        args.model, args.input_size, args.batch, args.num_classes, args.in_channels, args.seed, args.weights
    )


def _model_or_onnx(args):
    """The job of map/mask/export: a zoo model (--model) or an ONNX file (--onnx), never both."""
    if args.onnx is None:
        return _job(args)
    from hwprune.workflow import OnnxInput

    return OnnxInput.build(args.onnx, checks.input_shape(args.input_shape))


def cmd_demo(args) -> None:
    from hwprune import workflow
    from hwprune.results import ResultsStore

    start = time.perf_counter()
    with checks.StagedDir(args.out) as stage:  # the folder gets every file or none
        job, graph = _job_and_graph(args)
        print(graph.summary())
        set_stage("computing the mask")
        mask = workflow.make_mask(
            job, graph, args.method, args.ratio, args.seed, args.data, args.data_dir, args.imp_samples
        )
        mask.save(stage.staged("mask.json"))
        set_stage("compacting, exporting, verifying and timing")
        outcome = workflow.prune_export_measure(
            job,
            mask,
            graph,
            stage.staged(f"{args.model}_pruned.onnx"),
            args.method,
            threads=args.threads,
            repeats=args.repeats,
            results=None,  # appended once the files are in place
        )
        set_stage(f"moving the outputs into {args.out}")
        _unstage(outcome, stage)
        stage.commit()
    ResultsStore(args.out / "results.csv").append(outcome.record)
    print(outcome.table())
    print(
        f"\nmask: {args.out / 'mask.json'}; results row: {args.out / 'results.csv'}; "
        f"total {time.perf_counter() - start:.1f}s"
    )


def cmd_models(args) -> None:
    from hwprune.models import list_models

    print("\n".join(list_models(args.source)))


def cmd_datasets(args) -> None:
    from hwprune.data import dataset_info, list_datasets

    for name in list_datasets():
        info = dataset_info(name)
        print(f"{name:14s} classes={info.num_classes} channels={info.channels} size={info.native_size}")


def _job_and_graph(args):
    """Build the model (or read the ONNX file) and map its channel groups, naming each stage."""
    source = args.model if getattr(args, "onnx", None) is None else args.onnx
    set_stage(f"building {source}")
    job = _model_or_onnx(args) if hasattr(args, "onnx") else _job(args)
    set_stage(f"mapping the channel groups of {source}")
    return job, job.graph()


def _unstage(outcome, stage: checks.StagedDir) -> None:
    """Point a finished outcome's paths (report, results row) at where the staged files end up."""
    if outcome is None:
        return
    if outcome.export.onnx_path is not None:
        outcome.export.onnx_path = str(stage.final_path(outcome.export.onnx_path))
    outcome.export.notes = [stage.rewrite(n) for n in outcome.export.notes]
    outcome.record.artifacts = stage.rewrite(outcome.record.artifacts)
    outcome.record.extra = stage.rewrite(outcome.record.extra)


def cmd_map(args) -> None:
    _, graph = _job_and_graph(args)
    print(graph.explain() if args.explain else graph.summary())
    if not args.explain:
        for g in graph.groups:
            state = "prunable" if g.prunable else f"frozen: {g.reason}"
            print(f"  {g.id:4d} {g.name:40s} {g.size:5d}  {state}{'' if g.exact else ' (inexact)'}")
    if args.json:
        from hwprune.files import write_atomically

        data = [
            {
                "id": g.id,
                "name": g.name,
                "size": g.size,
                "prunable": g.prunable,
                "reason": g.reason,
                "exact": g.exact,
                "slices": [s.explain() for s in g.slices],
            }
            for g in graph.groups
        ]
        write_atomically(args.json, json.dumps(data, indent=1).encode())


def cmd_mask(args) -> None:
    from hwprune import workflow

    job, graph = _job_and_graph(args)
    set_stage("computing the mask")
    mask = workflow.make_mask(
        job, graph, args.method, args.ratio, args.seed, args.data, args.data_dir, args.imp_samples
    )
    mask.save(args.out)
    print(
        f"{args.out}: {len(mask.pruned_groups())} groups pruned, channel density "
        f"{mask.channel_density(graph):.3f} ({args.method}, ratio {args.ratio})"
    )


def cmd_export(args) -> None:
    from hwprune import workflow
    from hwprune.prune.masks import ChannelMask

    job, graph = _job_and_graph(args)
    set_stage("reading or computing the mask")
    mask = (
        ChannelMask.load(args.mask)
        if args.mask
        else workflow.make_mask(
            job, graph, args.method, args.ratio, args.seed, args.data, args.data_dir, args.imp_samples
        )
    )
    if args.onnx is not None:
        _export_onnx_file(args, job, graph, mask)
        return
    method = mask.meta.get("method", args.method)
    set_stage("compacting, exporting and verifying")
    outcome = workflow.prune_export_measure(
        job,
        mask,
        graph,
        args.out,
        method,
        threads=args.threads,
        results=args.results,
        measure_latency=args.latency,
        exporter=args.exporter,
    )
    print(outcome.table())


def _export_onnx_file(args, job, graph, mask) -> None:
    """`export --onnx`: compact the file itself, verify it in onnxruntime, optionally time both files."""
    from hwprune.export.onnx_compact import prune_onnx_file

    set_stage("compacting and verifying the ONNX file")
    report = prune_onnx_file(args.onnx, mask, args.out, graph=graph)
    print(report.table())
    if args.latency:
        from hwprune.latency import DEFAULT_BACKEND, measure

        before, after = measure(DEFAULT_BACKEND, [args.onnx, args.out], job.example, threads=args.threads)
        print(
            f"onnxruntime CPU latency ({args.threads} thread(s)): dense {before.median_ms:.2f} ms, "
            f"pruned {after.median_ms:.2f} ms, speed-up {before.median_ms / after.median_ms:.2f}x"
        )


def _budget(args) -> tuple[str, float]:
    chosen = [(k, getattr(args, k)) for k in ("latency", "flops", "params") if getattr(args, k) is not None]
    if not chosen:
        raise HwpruneError("`hwprune prune` needs one budget: --latency, --flops or --params (a ratio, e.g. 0.5)")
    if len(chosen) > 1:  # one from --config, one from the command line
        raise HwpruneError(
            f"`hwprune prune` takes one budget, got {' and '.join(f'--{k} {v:g}' for k, v in chosen)}: keep one"
        )
    return chosen[0]


def cmd_prune(args) -> None:
    from hwprune import workflow
    from hwprune.results import ResultsStore

    kind, target = _budget(args)
    lut_path = _prune_lut(args, kind)
    profiles = lut_path is not None and not lut_path.exists()
    with contextlib.ExitStack() as stack:
        if profiles:  # the journal lives where a rerun finds it (OUT or --lut's folder), not in the staging folder
            stack.enter_context(checks.created_dir(lut_path.parent))
            stack.enter_context(_journal_kept_if_measured(lut_path.with_suffix(".journal.jsonl")))
        stage = stack.enter_context(checks.StagedDir(args.out))  # mask, ONNX: all moved into OUT at the end, or none
        source = args.model if args.onnx is None else args.onnx
        set_stage(f"building {source}")
        job = _model_or_onnx(args)
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
        )
        set_stage(f"moving the outputs into {args.out}")
        _unstage(result.outcome, stage)
        stage.commit()
    if args.results is not None and result.outcome is not None:
        ResultsStore(args.results).append(result.outcome.record)
    print(result.table())
    if not result.within_tolerance:  # the artifact is written, but the budget was not shown to be met
        print(f"hwprune: {result.advice() or result.headline()}", file=sys.stderr)
        return PRUNE_EXIT[result.status]
    return 0


def _prune_lut(args, kind: str) -> Path | None:
    """The LUT a latency budget uses: --lut (existing, or created with --lut-create) or OUT/lut.json."""
    if kind != "latency":
        return None
    return args.lut if args.lut is not None else args.out / "lut.json"


@contextlib.contextmanager
def _journal_kept_if_measured(journal: Path):
    """On failure, remove a journal this run created and took no measurement into (so it blocks nothing)."""
    existed = journal.exists()
    try:
        yield
    except BaseException:
        if not existed and journal.exists() and not _has_measurements(journal):
            journal.unlink()
        raise


def _has_measurements(journal: Path) -> bool:
    try:
        text = journal.read_text(errors="replace")
    except OSError:
        return True  # cannot tell: keep it
    return any('"kind": "edge"' in line or '"kind": "calibration"' in line for line in text.splitlines())


def cmd_profile_edges(args) -> None:
    from hwprune.latency.profiler import profile_edges

    points = checks.kept_fractions(args.points)
    job, graph = _job_and_graph(args)
    journal = _profile_journal(args)
    set_stage(f"profiling {args.model} on {args.backend}")
    with _journal_kept_if_measured(journal):
        lut = profile_edges(
            job.model,
            graph,
            job.example,
            args.backend,
            points=points,
            threads=args.threads,
            repeats=args.repeats,
            journal=journal,
            round_to=args.round_to,
            passes=args.passes,
            calibration_masks=args.calibration_masks,
        )
        set_stage(f"writing {args.out}")
        lut.save(args.out)
    from hwprune.latency.model import LatencyModel

    set_stage("fitting the latency model")
    print(LatencyModel(lut, graph).fit_summary())
    print(
        f"{args.out}: {len(lut.points)} measurements over {len({p.group for p in lut.points})} groups, "
        f"baseline {lut.baseline_ms:.2f} ms ({args.backend}, {args.threads} thread(s)); CSV twin "
        f"{args.out.with_suffix('.csv')}; journal {journal}"
    )


def _profile_journal(args) -> Path:
    return args.journal or args.out.with_suffix(".journal.jsonl")


def cmd_latency(args) -> None:
    from hwprune.latency.lut import LUT
    from hwprune.latency.validate import validate

    lut = LUT.load(args.lut)
    job, graph = _job_and_graph(args)
    lut.check(
        model=job.name,
        fingerprint=graph.fingerprint(),
        input_shape=list(job.example.shape),
        backend=args.backend,
        threads=args.threads,
    )
    set_stage(f"measuring {args.masks} random masks on {args.backend}")
    result = validate(
        job.model, graph, job.example, lut, args.backend, n_masks=args.masks, threads=args.threads, repeats=args.repeats
    )
    summary = result.summary()
    print(
        f"latency model on {args.masks} random masks ({args.backend}, {args.threads} thread(s)): "
        f"{summary['within_5pct']:.0%} within +-5 %, {summary['within_10pct']:.0%} within +-10 %, "
        f"median |error| {summary['median_abs_err_pct']:.1f} %"
    )


def cmd_flops(args) -> None:
    from hwprune.flops import count_flops

    set_stage(f"building {args.model}")
    job = _job(args)
    set_stage(f"counting the FLOPs of {args.model}")
    print(count_flops(job.model, job.example).table(top=args.top))


def cmd_prune_train(args) -> None:
    from hwprune import api
    from hwprune.data import get_dataset, make_loader

    set_stage(f"building {args.model}")
    job = _job(args)
    size, channels = int(job.example.shape[-1]), int(job.example.shape[1])
    train_set = get_dataset(args.data, "train", data_dir=args.data_dir, image_size=size, channels=channels)
    test_set = get_dataset(args.data, "test", data_dir=args.data_dir, image_size=size, channels=channels)
    train_loader = make_loader(train_set, batch_size=args.batch_size, shuffle=True, seed=args.seed)
    test_loader = make_loader(test_set, batch_size=256, shuffle=False)
    set_stage(f"prune+train rounds of {args.model}")
    result = api.prune_train(
        job.model,
        job.example,
        train_loader,
        test_loader,
        out=args.out,
        name=job.name,
        importance=args.pruning_type,
        prune_percent=args.prune_percent,
        n_rounds=args.n_rounds,
        thresholds=json.loads(args.thresholds) if args.thresholds else None,
        warmup_epochs=args.warmup_epochs,
        epochs_per_round=args.epochs_per_round,
        final_epochs=args.final_epochs,
        lr=args.lr,
        lr_prune=args.lr_prune,
        moment=args.moment,
        preserve_moment=args.preserve_moment,
        track_batches=args.track_batches,
        alpha=args.alpha,
        imp_samples=args.imp_samples,
        grasp_T=args.grasp_T,
        T=args.T,
        seed=args.seed,
        results=args.results,
        dataset=args.data,
    )
    print(result.table(every_epoch=args.track_stats))


def cmd_evaluate(args) -> None:
    from hwprune import api
    from hwprune.data import get_dataset, make_loader

    source = args.model if args.onnx is None else args.onnx
    set_stage(f"building {source}")
    job = _model_or_onnx(args) if args.weights is None or args.mask is None else _job_without_weights(args)
    size, channels = int(job.example.shape[-1]), int(job.example.shape[1])
    set_stage(f"reading the {args.splits} split(s) of {args.data}")
    loaders = {
        split: make_loader(
            get_dataset(args.data, split, data_dir=args.data_dir, image_size=size, channels=channels),
            batch_size=args.batch_size,
            shuffle=False,
        )
        for split in args.splits.split(",")
    }
    set_stage(f"evaluating {source}")
    if args.onnx is not None:
        result = api.evaluate(args.onnx, loaders, example_inputs=job.example, threads=args.threads)
    else:
        from hwprune.prune.masks import ChannelMask

        mask = ChannelMask.load(args.mask) if args.mask is not None else None
        weights = args.weights if mask is not None else None  # without a mask they were loaded into the model
        result = api.evaluate(job.model, loaders, example_inputs=job.example, mask=mask, weights=weights, name=job.name)
    print(result.table())


def _job_without_weights(args):
    """The zoo model before its weights: with --mask they may fit the dense or the pruned model (api.evaluate)."""
    weights, args.weights = args.weights, None
    try:
        return _job(args)
    finally:
        args.weights = weights


def cmd_results(args) -> None:
    from hwprune.results import ResultsStore

    set_stage(f"reading {args.path}")
    frame = ResultsStore(args.path).load()
    if frame.empty:
        print(f"no results in {args.path}")
        return
    cols = [
        "time",
        "model",
        "method",
        "density",
        "params",
        "flops",
        "latency_backend",
        "latency_ms_median",
        "latency_before_ms",
        "accuracy_top1",
    ]
    print(frame[cols].tail(args.last).to_markdown(index=False) if _has_tabulate() else frame[cols].tail(args.last))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


# ----------------------------------------------------------------------------- checks before any work
# Each command's options and input files are checked here, in full, before a model is built or a
# file written: a mistake is found in a second, not after a profile or a training run.


def _check_model(args) -> None:
    if getattr(args, "onnx", None) is None and args.model is not None:
        checks.model_name(args.model)
    checks.model_input(args.input_size, args.batch, args.num_classes, args.in_channels, args.seed)


def _check_source(args) -> None:
    """--model or --onnx (map, mask, export)."""
    if args.onnx is None:
        if args.input_shape is not None:
            raise HwpruneError("--input-shape is for --onnx; with --model give --input-size (and --batch)")
        _check_model(args)
        return
    if args.model is not None:
        raise HwpruneError("give --model or --onnx, not both")
    if args.input_size is not None or args.in_channels is not None:
        raise HwpruneError("--input-size/--in-channels are for --model; with --onnx give --input-shape (1,3,32,32)")
    if args.weights is not None:
        raise HwpruneError("--weights is for --model: an ONNX file carries its own weights")
    if hasattr(args, "method"):
        from hwprune.graph_mapper.onnx_mapper import check_onnx_importance

        check_onnx_importance(args.method)
    shape = checks.input_shape(args.input_shape)
    checks.onnx_file(args.onnx, shape is not None)


def _check_importance(args, name: str) -> None:
    """Gradient-based importances need data; the data options must name what exists."""
    from hwprune.prune.importance import CHANNEL_IMPORTANCES

    data = getattr(args, "data", None)
    checks.dataset_name(data)
    if getattr(args, "data_dir", None) is not None:
        checks.input_folder(args.data_dir, "--data-dir")
    if hasattr(args, "imp_samples"):
        checks.whole(args.imp_samples, "--imp-samples", 1, "training examples the importance averages over")
    if data is None and CHANNEL_IMPORTANCES.get(name).needs_data:
        raise HwpruneError(f"importance {name!r} needs data: pass --data digits (offline) or a dataset in --data-dir")


def _check_mask_options(args) -> None:
    checks.ratio_removed(args.ratio)
    if getattr(args, "mask", None) is None:
        _check_importance(args, args.method)


def _check_demo(args) -> None:
    _check_model(args)
    _check_mask_options(args)
    checks.timing(args.threads, args.repeats)
    checks.output_dir(args.out)
    checks.results_file(args.out / "results.csv", "--out")


def _check_map(args) -> None:
    _check_source(args)
    if args.json is not None:
        checks.output_file(args.json, "--json", "groups.json")


def _check_mask(args) -> None:
    _check_source(args)
    _check_mask_options(args)
    checks.output_file(args.out, "--out", "mask.json")


def _check_export(args) -> None:
    from hwprune.prune.masks import ChannelMask

    _check_source(args)
    _check_mask_options(args)
    if args.mask is not None:
        checks.input_file(args.mask, "--mask", "mask file", ": make one with `hwprune mask`")
        ChannelMask.load(args.mask)  # its schema, before any work
    checks.whole(args.threads, "--threads", 1)
    checks.output_file(args.out, "--out", "model.onnx")
    if args.onnx is not None:
        if args.results is not None:
            raise HwpruneError("--results needs --model: a results row counts the FLOPs of a PyTorch model")
        if Path(args.out).absolute() == Path(args.onnx).absolute():
            raise HwpruneError(f"--out {args.out} is the --onnx input itself: write the pruned file elsewhere")
    if args.results is not None:
        checks.results_file(args.results)


def _check_prune(args) -> None:
    from hwprune.latency.lut import LUT

    if args.onnx is None and args.model is None:
        args.model = DEFAULT_PRUNE_MODEL
    _check_source(args)
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
    checks.prune_settings(kind, target, args.threads, args.repeats, args.tolerance, args.round_to, args.finetune_epochs)
    checks.backend(args.backend)
    _check_importance(args, args.importance)
    if args.finetune_epochs and args.data is None:
        raise HwpruneError("--finetune-epochs needs --data (digits works offline)")
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
        _check_journal(journal, "--lut" if args.lut is not None else "--out")


def _check_journal(journal: Path, name: str) -> None:
    """A journal to resume must be a readable, well-formed journal (its settings are compared later)."""
    from hwprune.latency.profiler import _read_journal

    checks.output_file(journal, f"journal (beside {name})" if name != "--journal" else name, "lut.journal.jsonl")
    _read_journal(journal, None, repair=False)


def _check_profile_edges(args) -> None:
    _check_model(args)
    checks.backend(args.backend)
    checks.kept_fractions(args.points)
    checks.timing(args.threads, args.repeats)
    checks.whole(args.round_to, "--round-to", 1)
    checks.whole(args.passes, "--passes", 1)
    checks.whole(args.calibration_masks, "--calibration-masks", 0)
    if Path(args.out).suffix.lower() == ".csv":
        raise HwpruneError(f"--out {args.out}: the LUT is JSON with a CSV twin beside it; give a .json name")
    checks.output_file(args.out, "--out", "lut.json")
    _check_journal(_profile_journal(args), "--journal" if args.journal else "--out")


def _check_latency(args) -> None:
    from hwprune.latency.lut import LUT

    _check_model(args)
    checks.backend(args.backend)
    checks.timing(args.threads, args.repeats)
    checks.whole(args.masks, "--masks", 1)
    checks.input_file(args.lut, "--lut", "LUT", ": create it with hwprune profile-edges")
    LUT.load(args.lut).check(backend=args.backend, threads=args.threads)


def _check_flops(args) -> None:
    _check_model(args)
    checks.whole(args.top, "--top", 1)


def _check_prune_train(args) -> None:
    _check_model(args)
    checks.dataset_name(args.data)
    if args.data_dir is not None:
        checks.input_folder(args.data_dir, "--data-dir")
    if args.thresholds is not None:
        try:
            thresholds = json.loads(args.thresholds)
        except json.JSONDecodeError:
            thresholds = None
        if not isinstance(thresholds, list) or not all(isinstance(t, (int, float)) for t in thresholds):
            raise HwpruneError(
                f"--thresholds is a JSON list of cumulative percents, e.g. '[10,50,80]' (got {args.thresholds})"
            )
    checks.whole(args.batch_size, "--batch-size", 1, "samples per training batch")
    checks.output_dir(args.out)
    if args.results is not None:
        checks.results_file(args.results)


def _check_evaluate(args) -> None:
    _check_source(args)
    checks.dataset_name(args.data)
    if args.data_dir is not None:
        checks.input_folder(args.data_dir, "--data-dir")
    if args.mask is not None:
        if args.onnx is not None:
            raise HwpruneError("--mask is for --model: an ONNX file is evaluated as it is (prune it: export --onnx)")
        checks.input_file(args.mask, "--mask", "mask")
    splits = args.splits.split(",")
    if not all(splits) or len(set(splits)) != len(splits) or not set(splits) <= {"train", "val", "test"}:
        raise HwpruneError(f"--splits is a comma-separated list of train, val, test (got {args.splits!r})")
    checks.whole(args.batch_size, "--batch-size", 1, "samples per evaluation batch")
    checks.whole(args.threads, "--threads", 1, "onnxruntime threads")


def _check_results(args) -> None:
    checks.input_file(args.path, "--path", "results file", ": run a job with --results first, or give --path")
    checks.whole(args.last, "--last", 1)


CHECKS = {
    "demo": _check_demo,
    "map": _check_map,
    "mask": _check_mask,
    "export": _check_export,
    "prune": _check_prune,
    "profile-edges": _check_profile_edges,
    "latency": _check_latency,
    "flops": _check_flops,
    "results": _check_results,
    "evaluate": _check_evaluate,
    "prune-train": _check_prune_train,
}


COMMANDS = {
    "demo": cmd_demo,
    "models": cmd_models,
    "datasets": cmd_datasets,
    "map": cmd_map,
    "mask": cmd_mask,
    "export": cmd_export,
    "flops": cmd_flops,
    "results": cmd_results,
    "evaluate": cmd_evaluate,
    "prune-train": cmd_prune_train,
    "prune": cmd_prune,
    "profile-edges": cmd_profile_edges,
    "latency": cmd_latency,
}


# subcommands with parsers of their own (their --help is theirs): hwprune NAME ARGS -> module.main(ARGS)
DELEGATED = {
    "prune-at-init": ("hwprune.sweep_cli", "prune at initialization, train, one results row per run (see --help)"),
    "compare": ("hwprune.compare_cli", "tables and plots from the results store (see --help)"),
    "train": ("hwprune.train.__main__", "train / fine-tune a model with a mask enforced (see --help)"),
    "gate": ("hwprune.gate_cli", "GATOR channel gating with a FLOPs/memory/latency cost, then ship (see --help)"),
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 on bad input (one line), 1 on an internal error (one line), 130 on ^C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HWPRUNE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    set_stage("reading the command line")
    with _signals_as_interrupts():
        try:
            return _run(argv)
        except HwpruneError as exc:
            print(f"hwprune: error: {first_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            name = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
            print(
                f"hwprune: interrupted ({name}) while {current_stage()}; no partial output was left: rerun the "
                "same command to go on (a profile resumes from its journal)",
                file=sys.stderr,
            )
            return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
        except Exception as exc:  # a bug: one line, the traceback only when asked for
            if debug:
                traceback.print_exc()
            todo = "report it with the traceback above" if debug else "rerun with --debug for the traceback, report it"
            print(
                f"hwprune: internal error while {current_stage()}: {type(exc).__name__}: {first_line(exc)} "
                f"(a bug, not your input; {todo})",
                file=sys.stderr,
            )
            return 1


def _run(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        import importlib

        set_stage(f"running hwprune {argv[0]}")
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    parser = _build_parser()
    args = _parse(parser, argv)
    set_stage(f"checking the options of hwprune {args.command}")
    if args.command in CHECKS:
        CHECKS[args.command](args)
    set_stage(f"running hwprune {args.command}")
    return COMMANDS[args.command](args) or 0


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM and SIGHUP raise :class:`Interrupted` (a KeyboardInterrupt), so cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
