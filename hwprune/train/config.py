"""The training configuration: one dataclass, checked when built.

Defaults follow the seeds' CIFAR recipe (SGD, momentum 0.9, cosine decay). The step schedule is the
seeds' ``preset``: the lr is multiplied by ``gamma`` at each milestone epoch; without milestones they
are placed at 50 % and 75 % of the epochs (GraSP/GCS code). The prune+train method's final training ([80, 40, 40]
epochs at lr [0.1, 0.01, 0.001]) is ``epochs=160, lr=0.1, schedule='step', milestones=(80, 120)``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from dataclasses import dataclass

from hwprune.errors import HwpruneError

SCHEDULES = ("cosine", "step", "constant")
SCHEDULE_ALIASES = {"preset": "step", "multistep": "step"}
DEVICES = ("cpu", "cuda", "xla")
FINETUNE_LR = 0.01
FINETUNE_EPOCHS = 10
INT_FIELDS = ("epochs", "batch_size", "warmup_epochs", "seed", "eval_every")
FLOAT_FIELDS = ("lr", "momentum", "weight_decay", "gamma", "label_smoothing")


@dataclass
class TrainConfig:
    """How to train: optimizer (SGD), lr schedule, device, and where logs and checkpoints go.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Samples per optimizer step (with DDP: the global batch, split among the ranks).
        lr: Peak learning rate.
        momentum: SGD momentum.
        weight_decay: L2 penalty added by SGD (to every parameter, as in the seeds).
        nesterov: Nesterov momentum.
        schedule: ``cosine`` (to 0 at the last epoch), ``step`` (alias ``preset``) or ``constant``.
        milestones: Epochs at which ``step`` multiplies the lr by ``gamma``; None = 50 % and 75 %.
        gamma: Step decay factor.
        warmup_epochs: Epochs of linear warm-up (epoch e < w uses lr * (e + 1) / w).
        seed: Seed of torch's generators (dropout, data order under DDP).
        device: ``cpu``, ``cuda`` (``cuda:N`` accepted) or ``xla`` (torch_xla; needs PJRT_DEVICE).
        log_dir: Folder for ``metrics.jsonl`` and TensorBoard events (when tensorboard is installed).
        checkpoint_dir: Folder for the first/best/last checkpoints (safetensors + JSON sidecar).
        label_smoothing: Cross-entropy label smoothing.
        eval_every: Evaluate on the test set every this many epochs (the last epoch always).
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: tuple[int, ...] | None = None
    gamma: float = 0.1
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "cpu"
    log_dir: str | None = None
    checkpoint_dir: str | None = None
    label_smoothing: float = 0.0
    eval_every: int = 1

    def __post_init__(self) -> None:
        self._check_types()
        self.schedule = SCHEDULE_ALIASES.get(self.schedule, self.schedule)
        if self.milestones is not None:
            self.milestones = tuple(sorted(self.milestones))
        self.validate()

    def _check_types(self) -> None:
        """Refuse values of the wrong type (a config file's ``epochs: "3"``, ``lr: null``) in one line."""
        for name in INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise HwpruneError(f"{name} must be a whole number, got {value!r}")
        for name in FLOAT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise HwpruneError(f"{name} must be a finite number, got {value!r}")
        if not isinstance(self.nesterov, bool):
            raise HwpruneError(f"nesterov must be true or false, got {self.nesterov!r}")
        for name in ("schedule", "device"):
            if not isinstance(getattr(self, name), str):
                raise HwpruneError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in ("log_dir", "checkpoint_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise HwpruneError(f"{name} must be a folder path, got {value!r}")
        if self.milestones is not None:
            if isinstance(self.milestones, (str, bytes)) or not hasattr(self.milestones, "__iter__"):
                raise HwpruneError(f"milestones must be a list of epochs, got {self.milestones!r}")
            for m in self.milestones:
                if isinstance(m, bool) or not isinstance(m, numbers.Integral):
                    raise HwpruneError(f"milestones must be whole-number epochs, got {list(self.milestones)!r}")

    def validate(self) -> None:
        """Raise a one-line :class:`HwpruneError` for a value that cannot work."""
        self._check_types()
        if self.epochs < 0:
            raise HwpruneError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise HwpruneError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise HwpruneError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise HwpruneError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise HwpruneError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.nesterov and self.momentum == 0:
            raise HwpruneError("nesterov needs momentum > 0")
        if self.schedule not in SCHEDULES:
            names = ", ".join((*SCHEDULES, *SCHEDULE_ALIASES))
            raise HwpruneError(f"unknown lr schedule {self.schedule!r}; use one of {names}")
        if self.milestones is not None and any(m < 1 for m in self.milestones):
            raise HwpruneError(f"milestones must be epochs >= 1, got {list(self.milestones)}")
        if not 0 < self.gamma <= 1:
            raise HwpruneError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.warmup_epochs < 0:
            raise HwpruneError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.device.split(":")[0] not in DEVICES:
            raise HwpruneError(f"unknown device {self.device!r}; use cpu, cuda, cuda:N or xla")
        if not 0 <= self.label_smoothing < 1:
            raise HwpruneError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.eval_every < 1:
            raise HwpruneError(f"eval_every must be >= 1, got {self.eval_every}")

    def replace(self, **changes) -> TrainConfig:
        """Return a copy with ``changes`` applied (and checked)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise HwpruneError(f"TrainConfig has no field {unknown[0]!r}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """Return the fields as JSON-ready values."""
        data = dataclasses.asdict(self)
        data["milestones"] = list(self.milestones) if self.milestones is not None else None
        return data

    @classmethod
    def finetune(cls, **changes) -> TrainConfig:
        """The fine-tuning default: a small lr (0.01), cosine, 10 epochs; ``changes`` override."""
        return cls(**{"lr": FINETUNE_LR, "epochs": FINETUNE_EPOCHS, **changes})
