"""Train, fine-tune and evaluate pruned models on cpu, cuda, xla (torch_xla) or DDP under torchrun.

Public API: :class:`TrainConfig`, :func:`train`, :func:`finetune`, :func:`evaluate`,
:func:`train_ddp`, :class:`TrainResult`, :class:`EvalResult`, :func:`lr_at`,
:func:`save_checkpoint`, :func:`load_checkpoint`, :class:`MaskEnforcer`, :func:`load_mask`,
:func:`channel_to_weight_mask`, and the argparse helpers :func:`add_train_args` / :func:`config_from_args`.
"""

from hwprune.train.checkpoint import load_checkpoint, read_sidecar, save_checkpoint
from hwprune.train.cli_args import add_train_args, config_from_args
from hwprune.train.config import TrainConfig
from hwprune.train.ddp import train_ddp
from hwprune.train.loop import EpochStats, EvalResult, TrainResult, evaluate, finetune, train
from hwprune.train.masking import MaskEnforcer, channel_to_weight_mask, load_mask
from hwprune.train.schedule import lr_at

__all__ = [
    "EpochStats",
    "EvalResult",
    "MaskEnforcer",
    "TrainConfig",
    "TrainResult",
    "add_train_args",
    "channel_to_weight_mask",
    "config_from_args",
    "evaluate",
    "finetune",
    "load_checkpoint",
    "load_mask",
    "lr_at",
    "read_sidecar",
    "save_checkpoint",
    "train",
    "train_ddp",
]
