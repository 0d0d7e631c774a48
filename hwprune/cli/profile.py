"""Latency profiles: `profile-edges` (the LUT) and `latency validate` (how well it predicts)."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwprune import checks
from hwprune.cli.options import (
    check_journal,
    check_model,
    job_and_graph,
    journal_kept_if_measured,
    model_options,
)
from hwprune.cli.registry import Command, register
from hwprune.errors import HwpruneError, set_stage


def cmd_profile_edges(args) -> None:
    from hwprune.latency.profiler import profile_edges

    points = () if args.per_op and args.points is None else checks.kept_fractions(args.points or "0.5")
    job, graph = job_and_graph(args)
    journal = _profile_journal(args)
    set_stage(f"profiling {args.model} on {args.backend}")
    with journal_kept_if_measured(journal):
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
            per_op=args.per_op,
            kernel_table=args.kernel_table,
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
    if args.action == "align":
        return _align(args)
    from hwprune.latency.lut import LUT
    from hwprune.latency.validate import validate

    lut = LUT.load(args.lut)
    job, graph = job_and_graph(args)
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


def _align(args) -> None:
    from hwprune.latency.alignment import alignment_step, backend_timer, probe_times, step_slowdowns

    set_stage(f"probing channel alignment on {args.backend}")
    times = probe_times(backend_timer(args.backend, args.threads, args.repeats))
    for step, slowdown in step_slowdowns(times).items():
        print(f"  counts in multiples of {step:2d}: {(slowdown - 1) * 100:+5.1f} % time per MAC vs multiples of 32")
    step = alignment_step(times)
    print(
        f"{args.backend} ({args.threads} thread(s)): channel counts in multiples of {step} run as fast as coarser "
        f"steps (within 5 %): use --round-to {step}"
    )


def _check_profile_edges(args) -> None:
    check_model(args)
    checks.backend(args.backend)
    if args.points is not None or not args.per_op:
        checks.kept_fractions(args.points or "0.5")
    if args.per_op:
        from hwprune.latency.profiler import check_per_op

        check_per_op(args.backend, args.calibration_masks)
    if args.kernel_table:
        from hwprune.latency.profiler import check_kernel_table

        check_kernel_table(args.backend)
    checks.timing(args.threads, args.repeats)
    checks.whole(args.round_to, "--round-to", 1)
    checks.whole(args.passes, "--passes", 1)
    checks.whole(args.calibration_masks, "--calibration-masks", 0)
    if Path(args.out).suffix.lower() == ".csv":
        raise HwpruneError(f"--out {args.out}: the LUT is JSON with a CSV twin beside it; give a .json name")
    checks.output_file(args.out, "--out", "lut.json")
    check_journal(_profile_journal(args), "--journal" if args.journal else "--out")


def _check_latency(args) -> None:
    from hwprune.latency.lut import LUT

    checks.backend(args.backend)
    checks.timing(args.threads, args.repeats)
    if args.action == "align":
        return
    if args.lut is None:
        raise HwpruneError("`hwprune latency validate` needs --lut (on the command line or in --config)")
    check_model(args)
    checks.whole(args.masks, "--masks", 1)
    checks.input_file(args.lut, "--lut", "LUT", ": create it with hwprune profile-edges")
    LUT.load(args.lut).check(backend=args.backend, threads=args.threads)


def _profile_edges_arguments(p: argparse.ArgumentParser) -> None:
    from hwprune.latency.backends import DEFAULT_BACKEND

    model_options(p, "resnet18")
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"latency backend (default {DEFAULT_BACKEND})")
    p.add_argument(
        "--points",
        default=None,
        help="kept fractions per group, comma-separated (default 0.5; none with --per-op unless given)",
    )
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
    p.add_argument(
        "--per-op",
        action="store_true",
        help="also time every conv/linear op in the dense model and each calibration mask (the backend's own "
        "per-node profile: ort-cpu, torch-cpu); the latency model then fits each op's cost from those, and no "
        "single-group points are needed unless --points is given (ResNet-50 in ~30 s instead of minutes)",
    )
    p.add_argument(
        "--kernel-table",
        action="store_true",
        help="also time each conv/linear op alone at every channel count of the --round-to grid (torch-cpu), so "
        "the latency model knows counts that are slow on this backend (oneDNN picks kernels by shape)",
    )


register(
    Command(
        "profile-edges",
        "Edge profile: time the whole network with each channel group at a fraction of its channels, against "
        "the dense model; writes a LUT (JSON + CSV). A journal makes an interrupted run resume.",
        _profile_edges_arguments,
        cmd_profile_edges,
        _check_profile_edges,
        (),
    )
)


def _latency_arguments(p: argparse.ArgumentParser) -> None:
    from hwprune.latency.backends import DEFAULT_BACKEND

    p.add_argument("action", choices=["validate", "align"])
    model_options(p, "resnet18")
    p.add_argument("--lut", type=Path, default=None, help="(validate: required) LUT from `hwprune profile-edges`")
    p.add_argument("--backend", default=DEFAULT_BACKEND, help=f"latency backend (default {DEFAULT_BACKEND})")
    p.add_argument("--threads", type=int, default=1, help="backend threads (default 1)")
    p.add_argument("--masks", type=int, default=30, help="random masks to measure (default 30)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per measurement (default 20)")


register(
    Command(
        "latency",
        "Latency tools. `latency validate`: measure N random masks (aligned like the LUT) against the dense "
        "model and report how well the LUT's latency model predicts them. `latency align`: time a probe "
        "convolution at every channel count from 64 to 128 on --backend and report the smallest --round-to "
        "step that runs as fast as coarser ones.",
        _latency_arguments,
        cmd_latency,
        _check_latency,
    )
)
