"""Learning rate per epoch: linear warm-up, then cosine, step (the seeds' ``preset``) or constant.

The lr is set once at the start of each epoch (as the seeds' schedulers step per epoch), so the lr
of any epoch is a pure function of the config and can be checked directly.
"""

from __future__ import annotations

import bisect
import math

from hwprune.train.config import TrainConfig


def milestones(config: TrainConfig) -> tuple[int, ...]:
    """The step schedule's milestones: the configured ones, or 50 % and 75 % of the epochs."""
    if config.milestones is not None:
        return config.milestones
    return tuple(sorted({max(1, int(config.epochs * 0.5)), max(1, int(config.epochs * 0.75))}))


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Return the learning rate used during ``epoch`` (0-based).

    Args:
        config: The training configuration.
        epoch: Epoch index, 0 for the first.

    Returns:
        The lr: ``lr * (epoch + 1) / warmup_epochs`` during warm-up; afterwards, for ``cosine``,
        ``lr * (1 + cos(pi * t / T)) / 2`` with ``t = epoch - warmup`` and ``T = epochs - warmup``
        (``lr`` at the first epoch after warm-up); for ``step``, ``lr * gamma ** k`` where ``k`` is
        the number of milestones <= ``epoch``; for ``constant``, ``lr``.
    """
    w = config.warmup_epochs
    if epoch < w:
        return config.lr * (epoch + 1) / w
    if config.schedule == "cosine":
        span = max(1, config.epochs - w)
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(epoch - w, span) / span))
    if config.schedule == "step":
        return config.lr * config.gamma ** bisect.bisect_right(milestones(config), epoch)
    return config.lr


def set_lr(optimizer, lr: float) -> None:
    """Set ``lr`` on every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
