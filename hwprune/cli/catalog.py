"""What is there and what was measured: `models`, `datasets`, `flops`, `results`."""

from __future__ import annotations

import argparse
from pathlib import Path

from hwprune import checks
from hwprune.cli.options import (
    build_job,
    check_model,
    model_options,
)
from hwprune.cli.registry import Command, register
from hwprune.errors import set_stage


def cmd_models(args) -> None:
    from hwprune.models import list_models

    print("\n".join(list_models(args.source)))


def cmd_datasets(args) -> None:
    from hwprune.data import list_datasets
    from hwprune.data.registry import describe_dataset

    for name in list_datasets():
        print(f"{name:14s} {describe_dataset(name)}")


def cmd_flops(args) -> None:
    from hwprune.graph_mapper.flops import count_flops

    set_stage(f"building {args.model}")
    job = build_job(args)
    set_stage(f"counting the FLOPs of {args.model}")
    print(count_flops(job.model, job.example).table(top=args.top))


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


def _check_flops(args) -> None:
    check_model(args)
    checks.whole(args.top, "--top", 1)


def _check_results(args) -> None:
    checks.input_file(args.path, "--path", "results file", ": run a job with --results first, or give --path")
    checks.whole(args.last, "--last", 1)


def _models_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--source",
        default="hwprune",
        choices=["hwprune", "torchvision", "timm", "hf", "all"],
        help="which models to list: hwprune's built-in ones (the default), torchvision's, timm's, the Hugging Face "
        "families built from a config (hf:<family>), or all",
    )


register(
    Command(
        "models",
        "List model names.",
        _models_arguments,
        cmd_models,
        None,
        (),
    )
)


def _datasets_arguments(p: argparse.ArgumentParser) -> None:
    pass


register(
    Command(
        "datasets",
        "List datasets (none download; file-based ones read --data-dir).",
        _datasets_arguments,
        cmd_datasets,
        None,
        (),
    )
)


def _flops_arguments(p: argparse.ArgumentParser) -> None:
    model_options(p)
    p.add_argument("--top", type=int, default=20, help="layers to list (default 20)")


register(
    Command(
        "flops",
        "FLOPs and params per layer (fvcore; 1 multiply-add = 1 FLOP).",
        _flops_arguments,
        cmd_flops,
        _check_flops,
        ("model",),
    )
)


def _results_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", type=Path, default=Path("runs/results.csv"), help="results CSV (default runs/results.csv)")
    p.add_argument("--last", type=int, default=20, help="show the newest N rows (default 20)")


register(
    Command(
        "results",
        "Show the results store as a table.",
        _results_arguments,
        cmd_results,
        _check_results,
        (),
    )
)
