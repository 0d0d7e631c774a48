"""What became of a prune-at-init run: ``collapsed``, ``untrainable`` or ``ok``.

* ``collapsed``: the mask leaves no path from the input to the output. Counted as Synaptic-Flow's
  ``R`` with the mask itself as the weights: kept weights 1, pruned 0, biases 0, batch norm the identity,
  an all-ones input; every op then maps non-negative values to non-negative values and a unit is
  non-zero exactly when some path reaches it, so the output sum is zero exactly when no path is left
  (max-pooling passes the largest count, so the number is a path count only without pooling). A layer
  keeping no weight is one way to collapse; a layer whose kept weights all meet removed units is another.
* ``untrainable``: connected, yet the trained model's test top-1 is not above chance: at most
  1/classes plus three binomial standard errors of a chance classifier on the test set's size.
* ``ok``: anything else.

:func:`logit_spread` tells an untrainable run's cause apart: logits that hardly depend on the input.
:func:`sign_purity` another: units whose kept weights all share one sign (GraSP scored in eval mode keeps
such filters on VGG-BN, and its runs train slowly though connected).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from hwprune.prune.masks import WeightMask
from hwprune.prune.scorers import scoring_state

STATUSES = ("ok", "untrainable", "collapsed")
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)
_NORM = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def log10_paths(model: nn.Module, mask: WeightMask, input_shape: tuple[int, ...]) -> float | None:
    """log10 of the masked network's input-to-output path count (``-inf`` when no path is left).

    Args:
        model: The model (not modified: a float64 copy is counted).
        mask: The weight mask; unmasked Conv/Linear weights count as all kept.
        input_shape: One input's shape without the batch axis, e.g. ``(3, 32, 32)``.

    Returns:
        The log10 count (``inf`` past float64's range), or None when it cannot be told: the model holds a
        parametrised layer other than Conv, Linear and batch norm with running statistics, or an
        overflowed count met a pruned weight.
    """
    net = copy.deepcopy(model).cpu().double().eval()
    for name, module in net.named_modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, _WEIGHTED):
            keep = mask.keep.get(f"{name}.weight" if name else "weight")
            w = torch.ones_like(module.weight) if keep is None else torch.as_tensor(keep, dtype=torch.float64)
            module.weight.copy_(w.reshape(module.weight.shape))
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, _NORM) and module.track_running_stats:
            module.reset_parameters()  # weight 1, bias 0, running mean 0, running var 1
            module.eps = 0.0
        elif own:
            return None
    total = float(net(torch.ones(1, *input_shape, dtype=torch.float64)).sum())
    if math.isnan(total):  # a count past float64 met a pruned weight (inf * 0): undetermined
        return None
    return math.log10(total) if total > 0 else -math.inf


@torch.no_grad()
def logit_spread(model: nn.Module, batches) -> float:
    """How much the logits depend on the input: their standard deviation over samples, averaged over classes.

    Measured as training's first step sees the model: masked, in train mode (batch norm on batch
    statistics; its running statistics are restored after). Near zero, the output is a constant set by
    the biases, and the gradient reaching the early layers vanishes with the signal.
    """
    with scoring_state(model, (), train_mode=True):
        logits = torch.cat([model(x) for x, _ in batches])
    return float(logits.std(dim=0).mean())


@torch.no_grad()
def sign_purity(model: nn.Module, mask: WeightMask) -> float | None:
    """How one-signed the kept weights of each unit are: 1 when every unit keeps weights of one sign only.

    Per masked Conv/Linear tensor, each output unit keeping at least two weights scores
    ``|2 p - 1|`` with ``p`` its fraction of positive kept weights; the units' mean per tensor, then the
    mean over tensors. Sign-symmetric weights kept at random score about ``sqrt(2 / (pi k))`` for ``k`` kept
    weights a unit. A one-signed filter on non-negative (post-ReLU) inputs can only sum them, a
    low-pass feature that training must first drive across zero. None when no unit keeps two weights.
    """
    params = dict(model.named_parameters())
    per_tensor = []
    for name, keep in mask.keep.items():
        if name not in params or keep.ndim < 2:
            continue
        kept = torch.as_tensor(keep, dtype=torch.bool).flatten(1)
        w = params[name].detach().cpu().flatten(1)
        count = kept.sum(1)
        positive = ((w > 0) & kept).sum(1)
        scored = count >= 2
        if scored.any():
            per_tensor.append(float((2 * positive[scored] / count[scored] - 1).abs().mean()))
    return sum(per_tensor) / len(per_tensor) if per_tensor else None


def chance_ceiling(num_classes: int, test_size: int) -> float:
    """The highest top-1 still read as chance: 1/C plus three binomial standard errors on ``test_size``."""
    p = 1.0 / num_classes
    return p + 3.0 * math.sqrt(p * (1.0 - p) / max(test_size, 1))


def run_status(collapsed: bool, top1: float | None, num_classes: int, test_size: int) -> str:
    """``collapsed``, ``untrainable`` (connected, top-1 at chance) or ``ok`` (also: connected, not evaluated)."""
    if collapsed:
        return "collapsed"
    if top1 is not None and top1 <= chance_ceiling(num_classes, test_size):
        return "untrainable"
    return "ok"
