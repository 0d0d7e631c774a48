"""Train, fine-tune and evaluate a (pruned) classifier with SGD, keeping its masks enforced.

One loop serves a single process (cpu, cuda, xla) and each DDP rank (:mod:`hwprune.train.ddp`).
Per step: forward, backward, zero the pruned weights' gradients, optimizer step, zero the pruned
weights again (weight decay and momentum would revive them), and on XLA cut the lazy graph.
Accuracies are fractions in [0, 1], as the results store expects.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.prune.masks import ChannelMask, WeightMask
from hwprune.train.checkpoint import save_checkpoint
from hwprune.train.config import TrainConfig
from hwprune.train.logger import MetricsLogger
from hwprune.train.masking import MaskEnforcer
from hwprune.train.objective import Objective
from hwprune.train.runtime import Runtime, resolve_device, wait
from hwprune.train.schedule import lr_at, set_lr

log = logging.getLogger("hwprune.train")

CHECKPOINT_NAMES = ("first", "best", "last")


class EvalResult(NamedTuple):
    """Test-set accuracy (fractions), mean loss and the seconds the evaluation took."""

    top1: float
    top5: float
    loss: float
    seconds: float


@dataclass
class EpochStats:
    """One epoch: its lr, training metrics, and test metrics when it was evaluated (None otherwise)."""

    epoch: int
    lr: float
    train_loss: float
    train_top1: float
    train_top5: float
    seconds: float
    test_loss: float | None = None
    test_top1: float | None = None
    test_top5: float | None = None
    eval_seconds: float | None = None


@dataclass
class TrainResult:
    """What a training run produced.

    Attributes:
        history: One :class:`EpochStats` per epoch, in order.
        best_top1: Highest test top-1 seen (None when never evaluated); ``best_top5`` and
            ``best_epoch`` belong to that evaluation.
        last_top1: Test top-1 after the last epoch; ``last_top5``, ``last_loss`` likewise.
        seconds: Wall time of the whole run (training, evaluation, checkpoints).
        train_seconds: Time spent in training epochs; ``eval_seconds`` in evaluation.
        checkpoints: ``{first|best|last: path}`` of the files written (rank 0 only).
        mask_violations: Pruned weights found non-zero at the end (0 while masks hold).
    """

    history: list[EpochStats] = field(default_factory=list)
    best_top1: float | None = None
    best_top5: float | None = None
    best_epoch: int | None = None
    last_top1: float | None = None
    last_top5: float | None = None
    last_loss: float | None = None
    seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    checkpoints: dict[str, str] = field(default_factory=dict)
    mask_violations: int = 0

    def record_fields(self) -> dict[str, float | None]:
        """The final accuracies as :class:`~hwprune.results.RunRecord` fields."""
        return {"accuracy_top1": self.last_top1, "accuracy_top5": self.last_top5}

    def to_json(self) -> dict:
        return asdict(self)


def _correct(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts of top-1 and top-5 hits (top-k with k = min(5, classes)), as float tensors."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == target.unsqueeze(1)
    return hits[:, 0].sum().float(), hits.any(dim=1).sum().float()


def _finish(runtime: Runtime, sums: list[torch.Tensor], count: int) -> tuple[float, float, float, int]:
    """All-reduce (loss sum, top-1 hits, top-5 hits, count) and return the means and the count."""
    total = torch.stack([*sums, torch.tensor(float(count), device=sums[0].device)])
    loss_sum, c1, c5, n = runtime.all_reduce_sum(total).tolist()
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    return loss_sum / n, c1 / n, c5 / n, int(n)


@torch.no_grad()
def _evaluate(model: nn.Module, loader, runtime: Runtime, criterion: nn.Module) -> EvalResult:
    was_training = model.training
    model.eval()
    dev = runtime.device
    wait(dev)
    start = time.perf_counter()
    sums = [torch.zeros((), device=dev) for _ in range(3)]
    count = 0
    try:
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            out = model(x)
            c1, c5 = _correct(out, y)
            sums[0] += criterion(out, y) * len(y)
            sums[1] += c1
            sums[2] += c5
            count += len(y)
            runtime.step_done()
        loss, top1, top5, _ = _finish(runtime, sums, count)
        wait(dev)
    finally:
        model.train(was_training)
    return EvalResult(top1, top5, loss, time.perf_counter() - start)


def evaluate(model: nn.Module, loader, device: str | torch.device = "cpu") -> EvalResult:
    """Measure top-1/top-5 accuracy and mean cross-entropy of ``model`` on ``loader``.

    Args:
        model: The classifier (moved to ``device`` in place; put back in its previous mode after).
        loader: Batches of ``(images, int64 labels)``.
        device: ``cpu``, ``cuda``, ``cuda:N``, ``xla`` or a torch.device.

    Returns:
        ``(top1, top5, loss, seconds)``: fractions in [0, 1] (NaN for an empty loader), mean loss,
        and the wall time of the pass (device work waited for, so it is the testing time).
    """
    runtime = Runtime(resolve_device(device))
    model.to(runtime.device)
    return _evaluate(model, loader, runtime, nn.CrossEntropyLoss())


def make_enforcer(
    model: nn.Module,
    weight_mask: WeightMask | None,
    channel_mask: ChannelMask | None,
    graph,
    dataset,
) -> MaskEnforcer:
    """Build the mask enforcer; a channel mask without its graph is mapped with one sample of ``dataset``."""
    example = None
    if channel_mask is not None and graph is None:
        if dataset is None or len(dataset) == 0:
            raise HwpruneError("a channel mask needs its ChannelGraph (graph=...) when there is no training data")
        example = dataset[0][0].unsqueeze(0)
    return MaskEnforcer(model, weight_mask, channel_mask, graph, example)


def _train_epoch(net, loader, runtime, criterion, optimizer, enforcer, objective) -> tuple[float, float, float]:
    net.train()
    dev = runtime.device
    sums = [torch.zeros((), device=dev) for _ in range(3)]
    count = 0
    for x, y in loader:
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        for xs, ys in zip(x.chunk(objective.subdivision), y.chunk(objective.subdivision), strict=True):
            out = net(xs)
            loss = criterion(out, ys)
            extra = objective.extra_loss()
            ((loss if extra is None else loss + extra) * (len(ys) / len(y))).backward()
            with torch.no_grad():
                c1, c5 = _correct(out.detach(), ys)
                sums[0] += loss.detach() * len(ys)
                sums[1] += c1
                sums[2] += c5
        enforcer.mask_grads()
        runtime.optimizer_step(optimizer)
        enforcer.apply()
        objective.after_step()
        count += len(y)
        runtime.step_done()
    loss, top1, top5, _ = _finish(runtime, sums, count)
    return loss, top1, top5


def _sync_buffers(model: nn.Module, runtime: Runtime) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift apart after the last forward)."""
    if runtime.distributed:
        import torch.distributed as dist

        with torch.no_grad():
            for b in model.buffers():
                dist.broadcast(b, src=0)


def fit(
    model: nn.Module,
    train_loader,
    test_loader,
    config: TrainConfig,
    runtime: Runtime,
    enforcer: MaskEnforcer,
    net: nn.Module | None = None,
    sampler=None,
    objective: Objective | None = None,
) -> TrainResult:
    """The training loop shared by :func:`train` and :func:`~hwprune.train.ddp.train_ddp`.

    Args:
        model: The model, already on ``runtime.device``; checkpoints and evaluation use it.
        train_loader: Training batches (this rank's shard under DDP).
        test_loader: Test batches (this rank's shard under DDP), or None to skip evaluation.
        config: The configuration.
        runtime: Device and rank.
        enforcer: Masks to hold (may be empty).
        net: What the forward pass calls (the DDP wrapper); ``model`` when None.
        sampler: A DistributedSampler to reseed each epoch, or None.
        objective: What a training method adds (a loss term, parameter groups, gradient
            accumulation; :class:`~hwprune.train.objective.Objective`); None: nothing.
    """
    start = time.perf_counter()
    net = model if net is None else net
    objective = objective or Objective()
    torch.manual_seed(config.seed)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(
        objective.param_groups(model),
        lr=lr_at(config, 0),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=config.nesterov,
    )
    result = TrainResult()
    logger = MetricsLogger(config.log_dir if runtime.is_main else None)
    writes = runtime.is_main and config.checkpoint_dir is not None

    def checkpoint(name: str, epoch: int, stats: EpochStats | None) -> None:
        if not writes:
            return
        meta = {"name": name, "epoch": epoch, "config": config.to_json(), "world_size": runtime.world_size}
        if stats is not None:
            meta.update(
                accuracy_top1=stats.test_top1,
                accuracy_top5=stats.test_top5,
                test_loss=stats.test_loss,
                train_loss=stats.train_loss,
            )
        path = save_checkpoint(model, f"{config.checkpoint_dir}/{name}", meta)
        result.checkpoints[name] = str(path)

    enforcer.apply()
    runtime.step_done()
    checkpoint("first", 0, None)
    try:
        for epoch in range(config.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            lr = lr_at(config, epoch)
            set_lr(optimizer, lr)
            t0 = time.perf_counter()
            loss, top1, top5 = _train_epoch(net, train_loader, runtime, criterion, optimizer, enforcer, objective)
            stats = EpochStats(epoch + 1, lr, loss, top1, top5, time.perf_counter() - t0)
            result.train_seconds += stats.seconds
            if not math.isfinite(loss):
                raise HwpruneError(f"training diverged: loss {loss} in epoch {epoch + 1}; lower the lr (now {lr:g})")
            last = epoch == config.epochs - 1
            if test_loader is not None and ((epoch + 1) % config.eval_every == 0 or last):
                _sync_buffers(model, runtime)
                ev = _evaluate(model, test_loader, runtime, eval_criterion)
                stats.test_top1, stats.test_top5, stats.test_loss, stats.eval_seconds = ev
                result.eval_seconds += ev.seconds
                result.last_top1, result.last_top5, result.last_loss = ev.top1, ev.top5, ev.loss
                if result.best_top1 is None or ev.top1 > result.best_top1:
                    result.best_top1, result.best_top5, result.best_epoch = ev.top1, ev.top5, epoch + 1
                    checkpoint("best", epoch + 1, stats)
            result.history.append(stats)
            _sync_buffers(model, runtime)
            checkpoint("last", epoch + 1, stats)
            logger.log(epoch + 1, {k: v for k, v in asdict(stats).items() if k != "epoch"} | objective.epoch_metrics())
            if runtime.is_main:
                test = f", test top-1 {stats.test_top1:.4f}" if stats.test_top1 is not None else ""
                log.info(
                    "epoch %d/%d lr %.4g: train loss %.4f top-1 %.4f%s (%.1f s)",
                    epoch + 1, config.epochs, lr, loss, top1, test, stats.seconds,
                )  # fmt: skip
    finally:
        logger.close()
    result.mask_violations = enforcer.violations()
    result.seconds = time.perf_counter() - start
    return result


def train(
    model: nn.Module,
    train_loader,
    test_loader,
    config: TrainConfig | None = None,
    weight_mask: WeightMask | None = None,
    channel_mask: ChannelMask | None = None,
    graph=None,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` in this process with SGD, holding the masks' pruned weights at exactly zero.

    Args:
        model: The classifier; moved to ``config.device`` in place and left there, trained.
        train_loader: Training batches of ``(images, int64 labels)``.
        test_loader: Test batches, or None to skip evaluation.
        config: The configuration (``TrainConfig()`` when None).
        weight_mask: Unstructured mask to enforce (parameter name -> keep).
        channel_mask: Channel mask to enforce (its weight-level pattern).
        graph: The ChannelGraph ``channel_mask`` was made for; mapped from one training sample
            when None.
        objective: What a training method adds to the loss (None: plain cross-entropy).

    Returns:
        The :class:`TrainResult` (history, best/last accuracy, seconds, checkpoint paths).

    Raises:
        HwpruneError: For a mask that does not fit, an unavailable device, or a diverging run.
    """
    config = config or TrainConfig()
    runtime = Runtime(resolve_device(config.device))
    model.to(runtime.device)
    enforcer = make_enforcer(model, weight_mask, channel_mask, graph, getattr(train_loader, "dataset", None))
    return fit(model, train_loader, test_loader, config, runtime, enforcer, objective=objective)


def finetune(
    model: nn.Module,
    train_loader,
    test_loader,
    config: TrainConfig | None = None,
    weight_mask: WeightMask | None = None,
    channel_mask: ChannelMask | None = None,
    graph=None,
    **changes,
) -> TrainResult:
    """Fine-tune: :func:`train` with a small-lr default (:meth:`TrainConfig.finetune`).

    Args:
        model: The (pruned) model.
        train_loader: Training batches.
        test_loader: Test batches, or None.
        config: Base configuration; ``TrainConfig.finetune()`` (lr 0.01, 10 epochs, cosine) when None.
        weight_mask: Unstructured mask to enforce.
        channel_mask: Channel mask to enforce.
        graph: The channel mask's graph.
        **changes: Config fields to override (``epochs=3, lr=0.005``).
    """
    config = config or TrainConfig.finetune()
    if changes:
        config = config.replace(**changes)
    return train(model, train_loader, test_loader, config, weight_mask, channel_mask, graph)
