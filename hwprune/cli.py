"""`hwprune <subcommand>`: one entry point over the library.

Options may also come from a JSON/YAML file (`--config FILE`); the command line overrides it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hwprune.errors import HwpruneError

DEMO_OUT = Path("out/demo")


def _model_options(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default=default_model,
        help=("(required) " if default_model is None else "")
        + "zoo name (see `hwprune models`); prefix torchvision:/timm:/seed: to disambiguate",
    )
    g.add_argument("--input-size", type=int, default=None, help="square input side in pixels (default: the model's)")
    g.add_argument("--batch", type=int, default=1, help="batch of the example input (default 1)")
    g.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the model's)")
    g.add_argument("--in-channels", type=int, default=None, help="input channels (default: the model's)")
    g.add_argument("--seed", type=int, default=0, help="seed for the example input and random scores")


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


def _build_parser() -> argparse.ArgumentParser:
    from hwprune.prune.importance import CHANNEL_IMPORTANCES

    parser = argparse.ArgumentParser(
        prog="hwprune",
        description="Hardware-aware pruning: map channel groups, prune, compact, export verified ONNX, measure.",
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
        "until within --tolerance. Writes mask.json, the verified compacted ONNX and a results row.",
    )
    _model_options(p, "resnet18")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--latency", type=float, default=None, help="target latency ratio, e.g. 0.5")
    budget.add_argument("--flops", type=float, default=None, help="target conv/linear MACs ratio")
    budget.add_argument("--params", type=float, default=None, help="target parameter ratio")
    p.add_argument("--backend", default="ort-cpu", help="latency backend (default ort-cpu)")
    p.add_argument("--lut", type=Path, default=None, help="edge-profile LUT from `hwprune profile-edges`")
    p.add_argument(
        "--importance",
        default="l1",
        choices=CHANNEL_IMPORTANCES.names(),
        help="channel importance (default l1); gradient-based ones need --data",
    )
    p.add_argument("--data", default=None, help="dataset for gradient-based importances (digits works offline)")
    p.add_argument("--data-dir", default=None, help="folder of file-based datasets")
    p.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the pruned model on --data (0: no)")
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
    p.add_argument("--backend", default="ort-cpu", help="latency backend (default ort-cpu)")
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
    p.add_argument("--backend", default="ort-cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--masks", type=int, default=30, help="random masks to measure (default 30)")
    p.add_argument("--repeats", type=int, default=20)

    p = add("flops", "FLOPs and params per layer (fvcore; 1 multiply-add = 1 FLOP).")
    _model_options(p)
    p.add_argument("--top", type=int, default=20, help="layers to list (default 20)")

    p = add("results", "Show the results store as a table.")
    p.add_argument("--path", type=Path, default=Path("runs/results.csv"))
    p.add_argument("--last", type=int, default=20)
    return parser


REQUIRED = {
    "map": ["model"],
    "mask": ["model", "out"],
    "export": ["model", "out"],
    "flops": ["model"],
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
    args = parser.parse_args(argv)
    if not getattr(args, "config", None):
        return args
    path = Path(args.config)
    try:
        text = path.read_text()
    except OSError as exc:
        raise HwpruneError(f"cannot read config {path}: {exc.strerror}") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise HwpruneError(f"config {path} must hold a mapping of option names to values")
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the chosen subcommand
    known = {a.dest: a for a in sub._actions}
    values = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(set(values) - set(known) - {"command", "config"})
    if unknown:
        raise HwpruneError(f"config {path}: unknown option(s) {', '.join(unknown)} for `hwprune {args.command}`")
    for key, value in values.items():
        action = known.get(key)
        if action is not None and action.type is not None and value is not None:
            value = action.type(value)
        sub.set_defaults(**{key: value})
    return parser.parse_args(argv)


def _job(args):
    from hwprune.jobs import ModelInput

    return ModelInput.build(args.model, args.input_size, args.batch, args.num_classes, args.in_channels, args.seed)


def _model_or_onnx(args):
    """The job of map/mask/export: a zoo model (--model) or an ONNX file (--onnx), never both."""
    if args.onnx is None:
        return _job(args)
    if args.model is not None:
        raise HwpruneError("give --model or --onnx, not both")
    from hwprune.graph_mapper.onnx_mapper import OnnxJob, check_onnx_importance

    if args.input_size is not None or args.in_channels is not None:
        raise HwpruneError("--input-size/--in-channels are for --model; with --onnx give --input-shape (1,3,32,32)")
    if hasattr(args, "method"):
        check_onnx_importance(args.method)
    return OnnxJob.build(args.onnx, _shape_arg(args.input_shape))


def _shape_arg(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise HwpruneError(f"--input-shape {text!r} is not a comma-separated list of positive sizes, e.g. 1,3,224,224")
    return shape


def cmd_demo(args) -> None:
    from hwprune.jobs import make_mask, prune_export_measure

    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    job = _job(args)
    graph = job.graph()
    print(graph.summary())
    mask = make_mask(job, graph, args.method, args.ratio, args.seed)
    mask.save(args.out / "mask.json")
    outcome = prune_export_measure(
        job,
        mask,
        graph,
        args.out / f"{args.model}_pruned.onnx",
        args.method,
        threads=args.threads,
        repeats=args.repeats,
        results=args.out / "results.csv",
    )
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


def cmd_map(args) -> None:
    graph = _model_or_onnx(args).graph()
    print(graph.explain() if args.explain else graph.summary())
    if not args.explain:
        for g in graph.groups:
            state = "prunable" if g.prunable else f"frozen: {g.reason}"
            print(f"  {g.id:4d} {g.name:40s} {g.size:5d}  {state}{'' if g.exact else ' (inexact)'}")
    if args.json:
        from hwprune.prune.masks import write_atomically

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
    from hwprune.export.pipeline import check_writable
    from hwprune.jobs import make_mask

    check_writable(args.out)
    job = _model_or_onnx(args)
    graph = job.graph()
    mask = make_mask(job, graph, args.method, args.ratio, args.seed)
    mask.save(args.out)
    print(
        f"{args.out}: {len(mask.pruned_groups())} groups pruned, channel density "
        f"{mask.channel_density(graph):.3f} ({args.method}, ratio {args.ratio})"
    )


def cmd_export(args) -> None:
    from hwprune.jobs import make_mask, prune_export_measure
    from hwprune.prune.masks import ChannelMask

    job = _model_or_onnx(args)
    graph = job.graph()
    mask = ChannelMask.load(args.mask) if args.mask else make_mask(job, graph, args.method, args.ratio, args.seed)
    if args.onnx is not None:
        _export_onnx_file(args, job, graph, mask)
        return
    method = mask.meta.get("method", args.method)
    outcome = prune_export_measure(
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

    if args.results is not None:
        raise HwpruneError("--results needs --model: a results row counts the FLOPs of a PyTorch model")
    report = prune_onnx_file(args.onnx, mask, args.out, graph=graph)
    print(report.table())
    if args.latency:
        from hwprune.latency import measure

        before, after = measure("ort-cpu", [args.onnx, args.out], job.example, threads=args.threads)
        print(
            f"onnxruntime CPU latency ({args.threads} thread(s)): dense {before.median_ms:.2f} ms, "
            f"pruned {after.median_ms:.2f} ms, speed-up {before.median_ms / after.median_ms:.2f}x"
        )


def _budget(args) -> tuple[str, float]:
    chosen = [(k, getattr(args, k)) for k in ("latency", "flops", "params") if getattr(args, k) is not None]
    if not chosen:
        raise HwpruneError("`hwprune prune` needs one budget: --latency, --flops or --params (a ratio, e.g. 0.5)")
    return chosen[0]


def cmd_prune(args) -> None:
    from hwprune.jobs import prune_to_budget

    if args.data and args.num_classes is None:  # the classifier must match the data it is scored/tuned on
        from hwprune.data import dataset_info

        args.num_classes = dataset_info(args.data).num_classes
    kind, target = _budget(args)
    result = prune_to_budget(
        _job(args),
        kind,
        target,
        args.out,
        backend=args.backend,
        lut_path=args.lut,
        importance=args.importance,
        threads=args.threads,
        repeats=args.repeats,
        tolerance=args.tolerance,
        results=args.results,
        round_to=args.round_to,
        data=args.data,
        data_dir=args.data_dir,
        finetune_epochs=args.finetune_epochs,
    )
    print(result.table())


def cmd_profile_edges(args) -> None:
    from hwprune.export.pipeline import check_writable
    from hwprune.latency.profiler import profile_edges

    check_writable(args.out)
    try:
        points = tuple(float(p) for p in args.points.split(","))
    except ValueError:
        raise HwpruneError(
            f"--points takes comma-separated fractions, e.g. 0.25,0.5,0.75 (got {args.points})"
        ) from None
    job = _job(args)
    graph = job.graph()
    journal = args.journal or args.out.with_suffix(".journal.jsonl")
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
    lut.save(args.out)
    from hwprune.latency.model import LatencyModel

    print(LatencyModel(lut, graph).fit_summary())
    print(
        f"{args.out}: {len(lut.points)} measurements over {len({p.group for p in lut.points})} groups, "
        f"baseline {lut.baseline_ms:.2f} ms ({args.backend}, {args.threads} thread(s)); CSV twin "
        f"{args.out.with_suffix('.csv')}; journal {journal}"
    )


def cmd_latency(args) -> None:
    from hwprune.latency.lut import LUT
    from hwprune.latency.validate import validate

    lut = LUT.load(args.lut)
    job = _job(args)
    graph = job.graph()
    lut.check(
        model=job.name,
        fingerprint=graph.fingerprint(),
        input_shape=list(job.example.shape),
        backend=args.backend,
        threads=args.threads,
    )
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

    job = _job(args)
    print(count_flops(job.model, job.example).table(top=args.top))


def cmd_results(args) -> None:
    from hwprune.results import ResultsStore

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


COMMANDS = {
    "demo": cmd_demo,
    "models": cmd_models,
    "datasets": cmd_datasets,
    "map": cmd_map,
    "mask": cmd_mask,
    "export": cmd_export,
    "flops": cmd_flops,
    "results": cmd_results,
    "prune": cmd_prune,
    "profile-edges": cmd_profile_edges,
    "latency": cmd_latency,
}


# subcommands with parsers of their own (their --help is theirs): hwprune NAME ARGS -> module.main(ARGS)
DELEGATED = {
    "prune-at-init": ("hwprune.sweep_cli", "prune at initialization, train, one results row per run (see --help)"),
    "compare": ("hwprune.compare_cli", "tables and plots from the results store (see --help)"),
    "train": ("hwprune.train.__main__", "train / fine-tune a model with a mask enforced (see --help)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    parser = _build_parser()
    try:
        args = _parse(parser, argv)
        COMMANDS[args.command](args)
    except HwpruneError as exc:
        print(f"hwprune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwprune: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
