"""``python -m hwprune.train``: train a zoo model on a dataset, optionally with a mask.

Runs in one process, or data-parallel when launched by torchrun::

    python -m hwprune.train --model lenet5 --dataset digits --image-size 28 --epochs 5
    torchrun --standalone --nproc_per_node 2 -m hwprune.train --model lenet5 --dataset digits --image-size 28
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys

from hwprune import checks
from hwprune.errors import HwpruneError, OneLineParser, first_line

PROG = "hwprune train"


def build_parser() -> argparse.ArgumentParser:
    from hwprune.train.cli_args import add_train_args

    p = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="zoo model name (see `hwprune models`)")
    p.add_argument("--dataset", default="digits", help="dataset name (default digits)")
    p.add_argument("--data-dir", default=None, help="folder holding file-based datasets")
    p.add_argument("--image-size", type=int, default=None, help="resize images to this side (default: native)")
    p.add_argument("--channels", type=int, default=None, help="image channels, 1 or 3 (default: the model's)")
    p.add_argument("--result", default=None, help="write the TrainResult as JSON here (rank 0)")
    add_train_args(p)
    return p


def run(argv: list[str] | None = None) -> int:
    """Parse ``argv``, train, print a one-line summary; returns the exit status."""
    from hwprune.data import dataset_info, get_dataset, make_loader
    from hwprune.models import get_model, model_spec
    from hwprune.prune.masks import ChannelMask
    from hwprune.train.cli_args import config_from_args
    from hwprune.train.ddp import train_ddp, under_torchrun
    from hwprune.train.loop import make_enforcer, train
    from hwprune.train.masking import load_mask

    args = build_parser().parse_args(argv)
    check_args(args)
    config = config_from_args(args)
    mask = load_mask(args.mask) if args.mask else None  # checked against its schema before any data is read
    if args.save_mask and mask is None:
        raise HwpruneError("--save-mask writes the mask given by --mask: pass --mask too")
    spec = model_spec(args.model)
    channels = args.channels or spec.in_channels
    info = dataset_info(args.dataset)
    size = args.image_size or info.native_size
    train_set = get_dataset(args.dataset, "train", args.data_dir, image_size=size, channels=channels)
    test_set = get_dataset(args.dataset, "test", args.data_dir, image_size=size, channels=channels)
    model = get_model(args.model, num_classes=info.num_classes, in_channels=channels, input_size=size)
    weight_mask = None if isinstance(mask, ChannelMask) else mask
    channel_mask = mask if isinstance(mask, ChannelMask) else None
    distributed = under_torchrun()
    rank0 = not distributed or int(os.environ.get("RANK", "0")) == 0
    if args.save_mask and rank0:
        make_enforcer(model, weight_mask, channel_mask, None, train_set).weight_mask.save(args.save_mask)
    with contextlib.ExitStack() as made:  # folders this run makes are removed again if it stops before using them
        for folder in (config.checkpoint_dir, config.log_dir):
            if folder is not None:
                made.enter_context(checks.created_dir(folder))
        if distributed:
            result = train_ddp(model, train_set, test_set, config, weight_mask, channel_mask)
        else:
            train_loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed)
            test_loader = make_loader(test_set, config.batch_size, shuffle=False)
            result = train(model, train_loader, test_loader, config, weight_mask, channel_mask)
    if rank0:
        if args.result:
            from hwprune.files import write_atomically

            write_atomically(args.result, json.dumps(result.to_json(), indent=1).encode())
        print(
            f"{args.model} on {args.dataset}: top-1 {result.last_top1:.4f} (best {result.best_top1:.4f} "
            f"at epoch {result.best_epoch}), {result.seconds:.1f} s"
            if result.last_top1 is not None
            else f"{args.model} on {args.dataset}: trained {config.epochs} epochs in {result.seconds:.1f} s"
        )
    return 0


def check_args(args: argparse.Namespace) -> None:
    """Every option and path of a training run, before any data is read (``hwprune.checks``)."""
    checks.model_name(args.model)
    checks.dataset_name(args.dataset)
    if args.data_dir is not None:
        checks.input_folder(args.data_dir, "--data-dir")
    checks.optional_whole(args.image_size, "--image-size", 1, "input side in pixels; leave it out for the native")
    if args.channels is not None and args.channels not in (1, 3):
        raise HwpruneError(f"--channels must be 1 or 3, got {args.channels}")
    if args.result is not None:
        checks.output_file(args.result, "--result", "result.json")
    check_paths(args)


def check_paths(args: argparse.Namespace) -> None:
    """The training options' paths: --mask readable, --save-mask, --checkpoint-dir and --log-dir writable."""
    if getattr(args, "mask", None) is not None:
        checks.input_file(args.mask, "--mask", "mask file", ": make one with `hwprune mask` or `--save-mask`")
    if getattr(args, "save_mask", None) is not None:
        checks.output_file(args.save_mask, "--save-mask", "weights.mask.json")
    for name in ("checkpoint_dir", "log_dir"):
        if getattr(args, name, None) is not None:
            checks.output_dir(getattr(args, name), "--" + name.replace("_", "-"))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(argv)
    except HwpruneError as exc:
        print(f"{PROG}: error: {first_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
