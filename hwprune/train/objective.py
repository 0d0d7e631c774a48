"""What a training method adds to the classifier's loss: a term, parameter groups, work after each step.

:func:`hwprune.train.loop.fit` calls these hooks; the default adds nothing, so plain training is
unchanged. Gradient accumulation lives here too: each batch is split into ``subdivision`` parts,
each part's loss weighted by its share of the batch, one optimizer step per batch.
"""

from __future__ import annotations

import torch
from torch import nn


class Objective:
    """The plain objective: cross-entropy only, one parameter group, one part per batch."""

    subdivision: int = 1

    def param_groups(self, model: nn.Module) -> list[dict]:
        """The optimizer's parameter groups (options not given take the trainer's)."""
        return [{"params": list(model.parameters())}]

    def extra_loss(self) -> torch.Tensor | None:
        """A term added to the loss of the forward pass just made (None: nothing)."""
        return None

    def after_step(self) -> None:
        """Called after every optimizer step (and after masks are re-applied)."""

    def epoch_metrics(self) -> dict:
        """Values to log with the epoch's metrics."""
        return {}
