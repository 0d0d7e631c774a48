r"""GATOR channel gating: train a hard gate per channel with a FLOPs, memory or latency cost, then ship.

Gates go on every prunable channel group the mapper finds (any architecture it reads), are trained
with the task loss plus GATOR's cost term, and become a channel mask; the model is compacted with
proof, exported to a verified ONNX file, timed against the dense model and logged as a results row
that records the gating settings. Examples::

    hwprune gate --model resnet18 --data digits --gating-config cfg.json --epochs 10
    hwprune gate --model resnet18 --data digits --gating-config cfg.json --lut lut.json --target 0.5
    torchrun --standalone --nproc_per_node 2 -m hwprune.prune.gating.cli --model resnet18 --gating-config cfg.json

The config is a JSON object with GATOR's keys (factor_type, criteria_weight, gradient_multiplier,
gate_init_prob, static_total_cost, edge_multipliers) plus target and temperature; options given on
the command line override it. ``--lut`` (from ``hwprune profile-edges`` on the model) supplies latency
edge multipliers. Output in --out: mask.json, model.onnx, gating.json (per-epoch cost and settings).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from hwprune import checks
from hwprune.errors import HwpruneError, OneLineParser, first_line

PROG = "hwprune gate"
OVERRIDES = (  # config keys the command line may override
    "factor_type",
    "criteria_weight",
    "gradient_multiplier",
    "gate_init_prob",
    "static_total_cost",
    "target",
    "temperature",
    "round_to",
)


def build_parser() -> argparse.ArgumentParser:
    from hwprune.latency.backends import DEFAULT_BACKEND
    from hwprune.train.cli_args import add_train_args

    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model and data")
    m.add_argument("--model", required=True, help="zoo model name (see `hwprune models`)")
    m.add_argument("--weights", default=None, help="start from these weights (safetensors or weights-only file)")
    m.add_argument("--data", "--dataset", dest="data", default="digits", help="dataset (default digits, offline)")
    m.add_argument("--data-dir", default=None, help="folder of file-based datasets")
    m.add_argument("--image-size", type=int, default=32, help="training input side in pixels (default 32)")
    m.add_argument("--channels", type=int, default=None, help="image channels, 1 or 3 (default: the model's)")
    g = p.add_argument_group("gating")
    g.add_argument("--gating-config", type=Path, default=None, help="JSON file of gating settings (GATOR's cfg)")
    g.add_argument("--lut", type=Path, default=None, help="edge-profile LUT: latency edge multipliers from it")
    g.add_argument("--subdivision", type=int, default=1, help="split each batch in K parts, accumulate (default 1)")
    g.add_argument("--factor-type", choices=["flop_factor", "memory_factor"], default=None, help="override")
    g.add_argument("--criteria-weight", type=float, default=None, help="override: weight of the cost term")
    g.add_argument("--gradient-multiplier", type=float, default=None, help="override: gate gradient multiplier")
    g.add_argument("--gate-init-prob", type=float, default=None, help="override: initial gate pass probability")
    g.add_argument("--static-total-cost", type=float, default=None, help="override: divisor of the cost term")
    g.add_argument("--target", type=float, default=None, help="override: hold once cost ratio <= this (0, 1]")
    g.add_argument("--temperature", type=float, default=None, help="override: sigmoid temperature")
    g.add_argument("--round-to", type=int, default=None, help="override: channels per gate (alignment; 1 = GATOR)")
    g.add_argument("--list-groups", action="store_true", help="print the gated groups (edge_multipliers order), exit")
    s = p.add_argument_group("shipping")
    s.add_argument("--out", type=Path, default=Path("out/gate"), help="output folder (default out/gate)")
    s.add_argument("--export-size", type=int, default=None, help="input side of export and timing (default: train)")
    s.add_argument(
        "--method", default=None, help="results method (default gator-flops, gator-params; gator-latency with --lut)"
    )
    s.add_argument("--backend", default=DEFAULT_BACKEND, help=f"latency backend (default {DEFAULT_BACKEND})")
    s.add_argument("--threads", type=int, default=1, help="backend threads (default 1)")
    s.add_argument("--repeats", type=int, default=30, help="timed rounds (default 30)")
    s.add_argument("--no-latency", action="store_true", help="export and verify, but do not time")
    s.add_argument("--results", type=Path, default=Path("runs/results.csv"), help="results store to append to")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_train_args(p)
    return p


def gating_config(args: argparse.Namespace):
    """The config file (or defaults) with the command line's overrides applied, all checked."""
    from hwprune.prune.gating.config import GatingConfig, load_config

    config = load_config(args.gating_config) if args.gating_config else GatingConfig()
    changes = {key: getattr(args, key) for key in OVERRIDES if getattr(args, key) is not None}
    if args.lut is not None and config.edge_multipliers is not None:
        logging.getLogger("hwprune").info("--lut replaces the config file's edge_multipliers")
        changes["edge_multipliers"] = None
    return config.replace(**changes) if changes else config


def check_args(args: argparse.Namespace) -> None:
    """Every option and path, before any data is read or model built."""
    from hwprune.latency.backends import require_available
    from hwprune.train.__main__ import check_paths

    if args.mask is not None or args.save_mask is not None:
        raise HwpruneError("--mask/--save-mask do not apply to gating: the gates decide the mask (written to --out)")
    checks.model_name(args.model)
    checks.dataset_name(args.data)
    if args.data_dir is not None:
        checks.input_folder(args.data_dir, "--data-dir")
    checks.whole(args.image_size, "--image-size", 1)
    checks.optional_whole(args.export_size, "--export-size", 1)
    checks.whole(args.subdivision, "--subdivision", 1)
    if args.subdivision > args.batch_size:
        raise HwpruneError(f"--subdivision {args.subdivision} is more than --batch-size {args.batch_size}")
    if args.channels is not None and args.channels not in (1, 3):
        raise HwpruneError(f"--channels must be 1 or 3, got {args.channels}")
    for name in ("gating_config", "lut"):
        if getattr(args, name) is not None:
            checks.input_file(getattr(args, name), "--" + name.replace("_", "-"))
    if args.weights is not None and Path(args.weights).suffix:  # a file (a torchvision weight name has no suffix)
        checks.input_file(args.weights, "--weights")
    if not args.list_groups:
        checks.output_dir(args.out, "--out")
        checks.results_file(args.results)
        checks.timing(args.threads, args.repeats)
        require_available(args.backend)
    check_paths(args)


def _data_and_model(args):
    from hwprune.data import dataset_info, get_dataset
    from hwprune.models import get_model, model_spec
    from hwprune.models.weights import load_weights

    spec = model_spec(args.model)
    channels = args.channels or spec.in_channels
    info = dataset_info(args.data)
    sets = [
        get_dataset(args.data, split, args.data_dir, image_size=args.image_size, channels=channels)
        for split in ("train", "test")
    ]
    model = get_model(args.model, num_classes=info.num_classes, in_channels=channels, input_size=args.image_size)
    if args.weights:
        load_weights(model, args.weights, args.model)
    if args.export_size not in (None, args.image_size):  # before training: can the model run at the export size?
        import torch

        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, channels, args.export_size, args.export_size))
        except Exception as exc:  # shape errors come as several types
            raise HwpruneError(
                f"{args.model} built for --image-size {args.image_size} cannot run at --export-size "
                f"{args.export_size} ({first_line(exc)}): export at the training size"
            ) from None
    return sets, model, channels


def list_groups(gated) -> str:
    lines = [f"{len(gated.layout.groups)} gated groups (edge_multipliers and gate_init_prob lists follow this order):"]
    for i, (group, slots) in enumerate(zip(gated.layout.groups, gated.layout.slot_counts, strict=True)):
        lines.append(f"  [{i}] group {group.id} {group.name!r}: {group.size} channels, {slots} gates")
    lines += [f"  not gated: group {g.id} {g.name!r}: {why}" for g, why in gated.layout.skipped]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> int:
    import torch

    from hwprune.data import make_loader
    from hwprune.prune.gating.run import ProgressLoader, finish, prepare
    from hwprune.train.cli_args import config_from_args
    from hwprune.train.ddp import train_ddp, under_torchrun
    from hwprune.train.loop import train

    args = build_parser().parse_args(argv)
    check_args(args)
    config = gating_config(args)
    train_config = config_from_args(args)
    (train_set, test_set), model, channels = _data_and_model(args)
    torch.manual_seed(train_config.seed)
    example = train_set[0][0].unsqueeze(0)
    gated, objective = prepare(model, example, config, args.lut, args.subdivision, args.model)
    if args.list_groups:
        print(list_groups(gated))
        return 0
    distributed = under_torchrun()
    rank0 = not distributed or int(os.environ.get("RANK", "0")) == 0
    with contextlib.ExitStack() as made:  # folders this run makes are removed again if it stops before using them
        for folder in (train_config.checkpoint_dir, train_config.log_dir, args.out):
            if folder is not None:
                made.enter_context(checks.created_dir(folder))
        if distributed:
            result = train_ddp(gated, train_set, test_set, train_config, objective=objective)
        else:
            loader = make_loader(train_set, train_config.batch_size, shuffle=True, seed=train_config.seed)
            if not args.no_progress:
                loader = ProgressLoader(loader, objective, f"gating {args.model}")
            test_loader = make_loader(test_set, train_config.batch_size, shuffle=False)
            result = train(gated, loader, test_loader, train_config, objective=objective)
        gate_result = finish(gated, objective, result)
        if rank0:
            ship(args, gate_result, channels)
    return 0


def ship(args, gate_result, channels: int) -> None:
    """Export with proof, time, log the row; then write the mask and the run's facts; print the outcome."""
    import torch

    from hwprune.files import write_atomically
    from hwprune.prune.gating.ship import default_method, ship_gated

    size = args.export_size or args.image_size
    example = torch.randn(1, channels, size, size, generator=torch.Generator().manual_seed(args.seed))
    outcome = ship_gated(
        gate_result,
        example,
        args.out / "model.onnx",
        args.method or default_method(gate_result),
        args.data,
        name=args.model,
        threads=args.threads,
        repeats=args.repeats,
        results=args.results,
        measure_latency=not args.no_latency,
        backend=args.backend,
        seed=args.seed,
    )
    gate_result.mask.save(args.out / "mask.json")
    facts = {"settings": gate_result.settings(), "history": gate_result.history, "record": outcome.record.to_dict()}
    write_atomically(args.out / "gating.json", json.dumps(facts, indent=1, default=float).encode())
    print(outcome.table())
    final = gate_result.history[-1] if gate_result.history else {}
    top1 = gate_result.train.last_top1
    print(
        f"{args.model} gated on {args.data}: cost ratio {final.get('cost_ratio', 1.0):.3f}"
        + (f", top-1 {top1:.4f} (the converted model's function)" if top1 is not None else "")
        + f"; wrote {args.out}/mask.json, model.onnx, gating.json"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("hwprune").setLevel(logging.INFO)  # epochs and notes; not the exporter's chatter
    try:
        return run(argv)
    except HwpruneError as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
