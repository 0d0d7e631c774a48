"""`hwprune demo`: uniform pruning of every group, end to end."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hwprune import checks
from hwprune.cli.options import (
    check_mask_options,
    check_model,
    job_and_graph,
    mask_options,
    model_options,
    unstage,
)
from hwprune.cli.registry import Command, register
from hwprune.errors import set_stage

DEMO_OUT = Path("out/demo")


def cmd_demo(args) -> None:
    from hwprune import workflow
    from hwprune.results import ResultsStore

    start = time.perf_counter()
    with checks.StagedDir(args.out) as stage:  # the folder gets every file or none
        job, graph = job_and_graph(args)
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
        unstage(outcome, stage)
        stage.commit()
    ResultsStore(args.out / "results.csv").append(outcome.record)
    print(outcome.table())
    print(
        f"\nmask: {args.out / 'mask.json'}; results row: {args.out / 'results.csv'}; "
        f"total {time.perf_counter() - start:.1f}s"
    )


def _check_demo(args) -> None:
    check_model(args)
    check_mask_options(args)
    checks.timing(args.threads, args.repeats)
    checks.output_dir(args.out)
    checks.results_file(args.out / "results.csv", "--out")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    model_options(p, "resnet18")
    mask_options(p)
    p.add_argument("--out", type=Path, default=DEMO_OUT, help=f"output folder (default {DEMO_OUT})")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads (default 2)")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per model (default 30)")


register(
    Command(
        "demo",
        "Uniform pruning: map resnet18, remove half the channels of every "
        "prunable group by L1 norm, compact, export and verify ONNX, time it in onnxruntime.",
        _demo_arguments,
        cmd_demo,
        _check_demo,
        (),
    )
)
