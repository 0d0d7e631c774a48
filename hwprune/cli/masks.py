"""Channel groups and masks: `map`, `mask`, `export` (of a zoo model or an ONNX file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwprune import checks
from hwprune.cli.options import (
    check_mask_options,
    check_source,
    job_and_graph,
    mask_options,
    model_options,
    onnx_option,
)
from hwprune.cli.registry import Command, register
from hwprune.errors import HwpruneError, set_stage


def cmd_map(args) -> None:
    _, graph = job_and_graph(args)
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

    job, graph = job_and_graph(args)
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

    job, graph = job_and_graph(args)
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


def _check_map(args) -> None:
    check_source(args)
    if args.json is not None:
        checks.output_file(args.json, "--json", "groups.json")


def _check_mask(args) -> None:
    check_source(args)
    check_mask_options(args)
    checks.output_file(args.out, "--out", "mask.json")


def _check_export(args) -> None:
    from hwprune.prune.masks import ChannelMask

    check_source(args)
    check_mask_options(args)
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


def _map_arguments(p: argparse.ArgumentParser) -> None:
    model_options(p)
    onnx_option(p)
    p.add_argument("--explain", action="store_true", help="print every group with its slices")
    p.add_argument("--json", type=Path, default=None, help="also write the groups as JSON to this file")


register(
    Command(
        "map",
        "Map a model's channel groups and print them.",
        _map_arguments,
        cmd_map,
        _check_map,
        ("model",),
    )
)


def _mask_arguments(p: argparse.ArgumentParser) -> None:
    model_options(p)
    onnx_option(p)
    mask_options(p)
    p.add_argument("--out", type=Path, default=None, help="(required) mask file to write (.json)")


register(
    Command(
        "mask",
        "Compute a channel mask and save it as JSON.",
        _mask_arguments,
        cmd_mask,
        _check_mask,
        ("model", "out"),
    )
)


def _export_arguments(p: argparse.ArgumentParser) -> None:
    model_options(p)
    onnx_option(p)
    p.add_argument("--mask", type=Path, default=None, help="mask file from `hwprune mask` (default: compute one)")
    mask_options(p)
    p.add_argument("--out", type=Path, default=None, help="(required) ONNX file to write")
    p.add_argument(
        "--exporter",
        default="dynamo",
        choices=["dynamo", "torchscript"],
        help="torch.onnx exporter: dynamo (torch.export, the default) or torchscript (the legacy tracer)",
    )
    p.add_argument("--results", type=Path, default=None, help="append a results row to this CSV")
    p.add_argument("--latency", action="store_true", help="also time dense vs pruned ONNX in onnxruntime")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for --latency (default 1)")


register(
    Command(
        "export",
        "Compact a model with a mask, export ONNX, verify it in onnxruntime, report.",
        _export_arguments,
        cmd_export,
        _check_export,
        ("model", "out"),
    )
)
