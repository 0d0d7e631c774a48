r"""Prune at initialization and train: the sweep (pruner x compression x seed), one results row per run.

Examples::

    # the embedded default: rand,mag,snip,grasp,synflow x 1,2,5,10,15,20 (ratio) on digits, VGG11-BN at
    # 1/16 width (vgg11_slim) at 32 px, 3 channels
    python tools/prune_at_init.py

    # the seed's VGG16 / CIFAR-10 table (data read from --data-dir, never downloaded)
    python tools/prune_at_init.py --model vgg16 --dataset cifar10 --data-dir data \\
        --pruner-list rand,mag,snip,grasp,synflow --compression-list 1,2,5,10,15,20 --compression-mode ratio \\
        --epochs 160 --results runs/results.csv --out out/sweep

``--compression-mode ratio``: compression x keeps 1/x of the weights (10 -> 10 %), as the seed's tables
read (1x ... 20x). ``exponent``: x keeps 10^-x (Synaptic-Flow's own ``--compression``; 1 -> 10 %). The
meaning used is printed before the sweep starts. Each run ends ``ok``, ``untrainable`` (connected, but
at chance after training) or ``collapsed`` (no path from input to output). Then tabulate with
``tools/compare_results.py``.
"""

from __future__ import annotations

import argparse
import sys

import torch

from hwprune import checks
from hwprune.at_init.status import STATUSES
from hwprune.at_init.sweep import SWEEP_COMPRESSIONS, SWEEP_PRUNERS, SYNFLOW_ROUNDS, run_sweep
from hwprune.errors import HwpruneError, OneLineParser, first_line
from hwprune.models.init import INITS
from hwprune.prune.weight_masking import COMPRESSION_MODES, RULES, density_from
from hwprune.train import add_train_args, config_from_args

PROG = "hwprune prune-at-init"
# The embedded default (no --model/--dataset): a CIFAR VGG with batch norm as the seeds' (VGG11-BN at 1/16
# width) on digits as CIFAR-shaped input, trained until the dense model converges; about two minutes on a CPU.
DEFAULT_MODEL = "vgg11_slim"
DEFAULT_DATASET = "digits"
DEFAULT_SMALL = {"epochs": 8, "lr": 0.1, "batch_size": 64, "image_size": 32, "channels": 3}


def _list(kind: type, text: str) -> list:
    try:
        values = [kind(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("the list is empty")
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command-line options (sweep options plus hwprune's training options)."""
    p = OneLineParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_argument_group("sweep")
    s.add_argument("--model", default=None, help=f"model name (default {DEFAULT_MODEL}, the small embedded sweep)")
    s.add_argument("--dataset", default=None, help=f"dataset name (default {DEFAULT_DATASET})")
    s.add_argument("--data-dir", default=None, help="folder holding on-disk datasets (never downloaded)")
    s.add_argument(
        "--pruner-list",
        type=lambda t: _list(str, t),
        default=list(SWEEP_PRUNERS),
        help=f"pruners, comma-separated (default {','.join(SWEEP_PRUNERS)})",
    )
    s.add_argument(
        "--compression-list",
        type=lambda t: _list(float, t),
        default=list(SWEEP_COMPRESSIONS),
        help=f"compressions, comma-separated (default {','.join(map(str, SWEEP_COMPRESSIONS))})",
    )
    s.add_argument(
        "--compression-mode",
        choices=COMPRESSION_MODES,
        default="ratio",
        help="ratio: x keeps 1/x of the weights (seed tables, 10x = 10 %%); exponent: x keeps 10^-x "
        "(Synaptic-Flow's --compression) (default ratio)",
    )
    s.add_argument("--seeds", type=lambda t: _list(int, t), default=[0], help="seeds, comma-separated (default 0)")
    s.add_argument("--image-size", type=int, default=None, help="input side (default: the model's)")
    s.add_argument("--channels", type=int, default=None, help="input channels (default: the dataset's)")
    s.add_argument("--scope", choices=("global", "local"), default="global", help="masking scope (default global)")
    s.add_argument(
        "--synflow-rounds", type=int, default=SYNFLOW_ROUNDS, help=f"SynFlow rounds (default {SYNFLOW_ROUNDS})"
    )
    s.add_argument("--prune-rounds", type=int, default=1, help="rounds for the other pruners (default 1)")
    s.add_argument(
        "--prune-schedule", choices=("exponential", "linear"), default="exponential", help="density schedule"
    )
    s.add_argument("--samples-per-class", type=int, default=10, help="pruning-set samples per class (default 10)")
    s.add_argument(
        "--pre-epochs", type=int, default=0, help="dense training before pruning (seed: 200 for Mag; default 0)"
    )
    s.add_argument("--dense-classifier", action="store_true", help="leave the classifier dense")
    s.add_argument(
        "--mask-rule",
        choices=RULES,
        default="reference",
        help="reference: remove int((1-d)N) lowest scores and every tie (Synaptic-Flow); exact: keep round(dN), "
        "ties by position (default reference)",
    )
    s.add_argument(
        "--gcs-eval-mode",
        action="store_true",
        help="score the gcs pruners in eval mode (running BN statistics); default train mode, as the reference",
    )
    s.add_argument(
        "--prune-train-mode",
        action="store_true",
        help="score snip and grasp in train mode (batch statistics), Synaptic-Flow's --prune-train-mode; "
        "default eval mode, as its default",
    )
    s.add_argument(
        "--init",
        choices=INITS,
        default="reference",
        help="reference: re-draw weights as Synaptic-Flow's models (Kaiming-normal, zero biases); model: the "
        "builder's own (default reference)",
    )
    s.add_argument(
        "--shuffle-mask",
        action="store_true",
        help="permute each layer's kept weights at random before training (Frankle et al. 2021's control: "
        "keeps the method's per-layer densities, discards which weights it chose)",
    )
    s.add_argument(
        "--sparse-eval",
        action="store_true",
        help="also time the test pass with Linear/Conv2d as CSR sparse products on CPU (median of 3, vs dense)",
    )
    s.add_argument("--results", default="runs/results.csv", help="results CSV to append to (default runs/results.csv)")
    s.add_argument("--out", default="out/sweep", help="folder for masks (and weights) (default out/sweep)")
    s.add_argument("--save-weights", action="store_true", help="save each trained state dict (for histograms)")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_train_args(p)
    return p


def _check(args: argparse.Namespace) -> None:
    """Every option and path, before any data is read or a model trained (``hwprune.checks``)."""
    checks.model_name(args.model)
    checks.dataset_name(args.dataset)
    if args.data_dir is not None:
        checks.input_folder(args.data_dir, "--data-dir")
    checks.optional_whole(args.threads, "--threads", 1)
    checks.optional_whole(args.image_size, "--image-size", 1, "input side in pixels")
    if args.channels is not None and args.channels not in (1, 3):
        raise HwpruneError(f"--channels must be 1 or 3, got {args.channels}")
    checks.whole(args.synflow_rounds, "--synflow-rounds", 1)
    checks.whole(args.prune_rounds, "--prune-rounds", 1)
    checks.whole(args.samples_per_class, "--samples-per-class", 1)
    checks.whole(args.pre_epochs, "--pre-epochs", 0)
    for c in args.compression_list:
        checks.real(c, "--compression-list", example="1,2,5,10")
    checks.results_file(args.results)
    checks.output_dir(args.out)
    _check_train_paths(args)


def _check_train_paths(args: argparse.Namespace) -> None:
    from hwprune.train.__main__ import check_paths

    check_paths(args)


def main(argv: list[str] | None = None) -> int:
    """Run the sweep; 0 on success, 2 with ``prune_at_init: error: ...`` on a usage or data error."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except HwpruneError as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 2
    small = args.model is None and args.dataset is None
    given = set(argv if argv is not None else sys.argv[1:])
    if small:
        args.model, args.dataset = DEFAULT_MODEL, DEFAULT_DATASET
        for key, value in DEFAULT_SMALL.items():
            flag = "--" + key.replace("_", "-")
            if not any(a == flag or a.startswith(flag + "=") for a in given):
                setattr(args, key, value)
        args.save_weights = True
    args.model = args.model or DEFAULT_MODEL
    args.dataset = args.dataset or DEFAULT_DATASET
    try:
        _check(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        config = config_from_args(args)
        example = density_from(10 if args.compression_mode == "ratio" else 1, args.compression_mode)
        meaning = (
            "ratio: compression x keeps 1/x of the prunable weights (10 -> 10 %)"
            if args.compression_mode == "ratio"
            else "exponent: compression x keeps 10^-x of the prunable weights (1 -> 10 %)"
        )
        print(f"{PROG}: compression mode {meaning} [check: density {example:g}]")
        print(
            f"{PROG}: {args.model} on {args.dataset}, pruners {','.join(args.pruner_list)}, compressions "
            f"{','.join(f'{c:g}' for c in args.compression_list)}, seeds {','.join(map(str, args.seeds))}, "
            f"{config.epochs} epochs" + (" (embedded small default)" if small else "")
        )
        with checks.created_dir(args.out):  # removed again if the sweep stops before writing into it
            records = run_sweep(
                args.model,
                args.dataset,
                args.pruner_list,
                args.compression_list,
                args.compression_mode,
                args.seeds,
                config.epochs,
                train_config=config,
                data_dir=args.data_dir,
                image_size=args.image_size,
                channels=args.channels,
                scope=args.scope,
                synflow_rounds=args.synflow_rounds,
                rounds=args.prune_rounds,
                schedule=args.prune_schedule,
                samples_per_class=args.samples_per_class,
                pre_epochs=args.pre_epochs,
                dense_classifier=args.dense_classifier,
                mask_rule=args.mask_rule,
                gcs_train_mode=not args.gcs_eval_mode,
                prune_train_mode=args.prune_train_mode,
                init=args.init,
                sparse_eval=args.sparse_eval,
                shuffle_mask=args.shuffle_mask,
                results_path=args.results,
                out_dir=args.out,
                save_weights=args.save_weights,
                progress=not args.no_progress,
            )
    except HwpruneError as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 2
    for r in records:
        extra = r.extra_dict()
        top1 = float("nan") if r.accuracy_top1 is None else r.accuracy_top1
        csr = f" (csr {extra['testing_seconds_csr']:.3f}s)" if "testing_seconds_csr" in extra else ""
        print(
            f"{r.method:>8} c={r.target_value:g} seed={r.seed}: density {r.density:.4f} top1 {top1:.4f} "
            f"flops {r.flops} test {extra['testing_seconds']:.3f}s{csr} {extra['status']}"
        )
    statuses = [r.extra_dict()["status"] for r in records]
    counts = ", ".join(f"{statuses.count(s)} {s}" for s in STATUSES)
    print(f"{PROG}: {len(records)} rows ({counts}) appended to {args.results}; tabulate with hwprune compare")
    return 0


if __name__ == "__main__":
    sys.exit(main())
