"""Training options for an argparse parser, and the TrainConfig they describe.

Usage::

    add_train_args(parser)
    args = parser.parse_args()
    config = config_from_args(args)
    mask = load_mask(args.mask) if args.mask else None     # hwprune.train.masking.load_mask

``--mask`` / ``--save-mask`` carry the seeds' GPU-to-TPU hand-off (``--mask_path`` /
``--storage_mask``): compute a mask on one machine, save it, train with it on another.
"""

from __future__ import annotations

import argparse
import dataclasses

from hwprune.errors import HwpruneError
from hwprune.train.config import SCHEDULE_ALIASES, SCHEDULES, TrainConfig

_DEFAULTS = TrainConfig()


def _milestones(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"milestones must be epochs like 80,120, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("milestones must list at least one epoch")
    return values


def add_train_args(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """Add the training options to ``parser`` (as a ``training`` group) and return the group.

    ``--seed`` is added unless the parser already has it (then that value seeds training too).
    """
    d = _DEFAULTS
    g = parser.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=d.epochs, help=f"passes over the training set (default {d.epochs})")
    g.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help=f"samples per step; with DDP the global batch (default {d.batch_size})",
    )
    g.add_argument("--lr", type=float, default=d.lr, help=f"peak SGD learning rate (default {d.lr})")
    g.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum (default {d.momentum})")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument(
        "--weight-decay", type=float, default=d.weight_decay, help=f"L2 weight decay (default {d.weight_decay})"
    )
    g.add_argument(
        "--schedule",
        default=d.schedule,
        choices=[*SCHEDULES, *SCHEDULE_ALIASES],
        help="lr schedule: cosine to 0, step (= preset: x gamma at each milestone), constant (default cosine)",
    )
    g.add_argument(
        "--milestones",
        type=_milestones,
        default=None,
        help="epochs where the step schedule decays the lr, e.g. 80,120 (default: 50%% and 75%% of --epochs)",
    )
    g.add_argument("--gamma", type=float, default=d.gamma, help=f"step schedule decay factor (default {d.gamma})")
    g.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs, help="epochs of linear lr warm-up (default 0)")
    g.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="label smoothing (default 0)")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N epochs (default 1)")
    g.add_argument(
        "--device",
        default=d.device,
        help="cpu, cuda, cuda:N or xla (torch_xla; set PJRT_DEVICE=CPU or TPU) (default cpu)",
    )
    g.add_argument("--mask", default=None, help="weight or channel mask JSON to enforce while training")
    g.add_argument(
        "--save-mask", default=None, help="write the enforced (weight-level) mask here, to train with it elsewhere"
    )
    g.add_argument("--checkpoint-dir", default=None, help="write first/best/last checkpoints (safetensors) here")
    g.add_argument("--log-dir", default=None, help="write metrics.jsonl (and TensorBoard events if installed) here")
    try:
        g.add_argument("--seed", type=int, default=d.seed, help="seed of training randomness (default 0)")
    except argparse.ArgumentError:
        pass  # the parser has its own --seed; it is used
    return g


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Build the :class:`TrainConfig` the parsed options describe.

    Raises:
        HwpruneError: For a value the config refuses (one line).
    """
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if not isinstance(values.get("seed", 0), int):
        raise HwpruneError(f"--seed must be an integer, got {values['seed']!r}")
    return TrainConfig(**values)
