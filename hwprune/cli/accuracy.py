"""Accuracy: `prune-train` (prune+train rounds) and `evaluate` (a saved model, or the ONNX file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hwprune import checks
from hwprune.cli.options import (
    build_job,
    check_model,
    check_source,
    model_options,
    model_or_onnx,
    onnx_option,
)
from hwprune.cli.registry import Command, register
from hwprune.errors import HwpruneError, set_stage


def cmd_prune_train(args) -> None:
    from hwprune import api
    from hwprune.data import split_loader

    set_stage(f"building {args.model}")
    job = build_job(args)
    train_loader = split_loader(args.data, "train", job.example, args.batch_size, True, args.seed, args.data_dir)
    test_loader = split_loader(args.data, "test", job.example, 256, data_dir=args.data_dir)
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
        schedule=args.schedule,
        bn_samples=args.bn_samples,
        flops=args.flops,
        normalise=args.normalise,
        round_to=args.round_to,
        distill=args.distill,
        distill_temperature=args.distill_temperature,
        results=args.results,
        dataset=args.data,
    )
    print(result.table(every_epoch=args.track_stats))


def cmd_evaluate(args) -> None:
    from hwprune import api
    from hwprune.data import split_loader

    source = args.model if args.onnx is None else args.onnx
    set_stage(f"building {source}")
    job = model_or_onnx(args) if args.weights is None or args.mask is None else _job_without_weights(args)
    set_stage(f"reading the {args.splits} split(s) of {args.data}")
    loaders = {
        split: split_loader(args.data, split, job.example, args.batch_size, data_dir=args.data_dir)
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
        return build_job(args)
    finally:
        args.weights = weights


def _check_prune_train(args) -> None:
    check_model(args)
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
    check_source(args)
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


def _prune_train_arguments(p: argparse.ArgumentParser) -> None:
    from hwprune.prune.budget import NORMALISATIONS
    from hwprune.prune.importance import CHANNEL_IMPORTANCES
    from hwprune.workflow.prune_train import PruneTrainConfig

    d = PruneTrainConfig()  # the defaults live in the config, shared with hwprune.prune_train
    model_options(p, "resnet20")
    p.add_argument("--data", default="digits", help="dataset (default digits, offline; imagefolder with --data-dir)")
    p.add_argument("--data-dir", default=None, help="folder of file-based datasets")
    p.add_argument("--pruning-type", default=d.importance, choices=CHANNEL_IMPORTANCES.names(), help="importance")
    p.add_argument(
        "--prune-percent",
        type=float,
        default=d.prune_percent,
        help="percent of channels removed (default %(default)s)",
    )
    p.add_argument(
        "--n-rounds", type=int, default=d.n_rounds, help="rounds the pruning is divided over (default %(default)s)"
    )
    p.add_argument("--thresholds", default=None, help="cumulative percent per round, e.g. '[10,50,80]'")
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=d.warmup_epochs,
        help="epochs before pruning (%(default)s)",
    )
    p.add_argument(
        "--epochs-per-round",
        type=int,
        default=d.epochs_per_round,
        help="epochs after each round (%(default)s)",
    )
    p.add_argument(
        "--final-epochs",
        type=int,
        default=d.final_epochs,
        help="epochs after the last round (%(default)s)",
    )
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of warm-up and final training (%(default)s)")
    p.add_argument(
        "--lr-prune", type=float, default=d.lr_prune, help="learning rate during the pruning rounds (%(default)s)"
    )
    p.add_argument("--moment", type=float, default=d.moment, help="SGD momentum (%(default)s)")
    p.add_argument("--preserve-moment", action="store_true", help="carry kept channels' momentum through pruning")
    p.add_argument(
        "--track-batches",
        type=int,
        default=d.track_batches,
        help="track importance over N batches (0: no)",
    )
    p.add_argument("--alpha", type=float, default=d.alpha, help="exponential-average factor of tracking (%(default)s)")
    p.add_argument(
        "--imp-samples", type=int, default=d.imp_samples, help="examples untracked importance uses (%(default)s)"
    )
    p.add_argument("--grasp-T", type=float, default=d.grasp_T, help="temperature of grasp/grad_preserve (%(default)s)")
    p.add_argument("--T", type=float, default=d.T, help="training temperature, logits / T (default %(default)s)")
    p.add_argument(
        "--schedule",
        default=d.schedule,
        choices=("cosine", "constant"),
        help="lr over the rounds: cosine from --lr-prune to 0 over all pruning epochs (and from --lr over the "
        "final ones), or constant (the seed's fixed rates); default %(default)s",
    )
    p.add_argument(
        "--bn-samples",
        type=int,
        default=d.bn_samples,
        help="training examples BatchNorm statistics are re-estimated on after each compaction (0: off; "
        "default %(default)s)",
    )
    p.add_argument(
        "--flops",
        type=float,
        default=None,
        help="reach this ratio of the dense FLOPs over the rounds (budget solver, least importance per FLOP "
        "first) instead of --prune-percent of the channels",
    )
    p.add_argument(
        "--round-to",
        type=int,
        default=d.round_to,
        help="with --flops: kept channel counts are multiples of this, halved for groups of fewer than 4 steps "
        "(default %(default)s, ONNX Runtime CPU's alignment; 8 for GPUs, 1: any count)",
    )
    p.add_argument(
        "--normalise",
        default=d.normalise,
        choices=NORMALISATIONS,
        help="with --flops: how importance is compared across groups: cost (each group's total = its FLOPs "
        "share), mean (each group's mean = 1), none (raw, global); default %(default)s",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=d.distill,
        help="weight of the distillation term (soft targets of the dense model) in every epoch (0: off)",
    )
    p.add_argument(
        "--distill-temperature", type=float, default=d.distill_temperature, help="distillation temperature T"
    )
    p.add_argument("--batch-size", type=int, default=64, help="training batch (default 64)")
    p.add_argument("--track-stats", action="store_true", help="print train/test accuracy of every epoch")
    p.add_argument("--out", type=Path, default=None, help="(required) run folder: checkpoints, ONNX")
    p.add_argument("--results", type=Path, default=None, help="append a results row to this CSV")


register(
    Command(
        "prune-train",
        "Prune+train rounds (the gradient-flow framework): --prune-percent of the channels removed over "
        "--n-rounds, each round scoring, pruning, physically compacting and training; then the verified ONNX "
        "of the result. Checkpoints every round in --out: rerun the same command to resume.",
        _prune_train_arguments,
        cmd_prune_train,
        _check_prune_train,
        ("out",),
    )
)


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    model_options(p)
    onnx_option(p)
    p.add_argument("--mask", type=Path, default=None, help="channel mask (mask.json from mask/prune) to apply")
    p.add_argument("--data", default=None, help="(required) dataset to evaluate on (digits works offline)")
    p.add_argument("--data-dir", default=None, help="folder of file-based datasets (imagefolder: train/, val/, test/)")
    p.add_argument("--splits", default="test", help="comma-separated splits to evaluate (default test; train,test)")
    p.add_argument("--batch-size", type=int, default=128, help="evaluation batch (default 128)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime threads for --onnx (default 1)")


register(
    Command(
        "evaluate",
        "Accuracy (top-1/top-5 per split), params, FLOPs and compression of a saved model: a zoo model with "
        "--weights, pruned by --mask (compacted first; --weights may then be the pruned model's own weights), "
        "or an ONNX file run in onnxruntime (--onnx: the file you deploy).",
        _evaluate_arguments,
        cmd_evaluate,
        _check_evaluate,
        ("model", "data"),
    )
)
