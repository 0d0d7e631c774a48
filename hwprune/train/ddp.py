r"""Data-parallel training under ``torchrun`` (DistributedDataParallel, env:// rendezvous).

Each rank builds the same model and calls :func:`train_ddp`; gloo is used on CPU and nccl on CUDA.
The training set is split by a DistributedSampler (reshuffled per epoch from ``config.seed``), the
test set into disjoint shards whose counts are summed over the ranks, so reported accuracy is over
the whole test set exactly once. ``config.batch_size`` is the global batch: each rank takes
``batch_size // world_size``. Masks are enforced on every rank; only rank 0 writes checkpoints and
logs. Example::

    torchrun --standalone --nproc_per_node 2 -m hwprune.train --model lenet5 --dataset digits --image-size 28 \
        --epochs 5 --mask mask.json --checkpoint-dir out/ckpt
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torch.utils.data.distributed import DistributedSampler

from hwprune.errors import HwpruneError
from hwprune.prune.masks import ChannelMask, WeightMask
from hwprune.train.config import TrainConfig
from hwprune.train.loop import TrainResult, fit, make_enforcer
from hwprune.train.runtime import Runtime

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def under_torchrun() -> bool:
    """Whether torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) is set."""
    return all(k in os.environ for k in TORCHRUN_ENV)


def init_distributed(device: str) -> tuple[Runtime, bool]:
    """Join the process group from torchrun's environment (unless already joined).

    Args:
        device: ``cpu`` (gloo) or ``cuda`` (nccl; each rank takes ``cuda:LOCAL_RANK``).

    Returns:
        ``(runtime, owned)``: owned is True when this call created the group (and should destroy it).
    """
    kind = device.split(":")[0]
    if kind == "xla":
        raise HwpruneError("DDP on 'xla' is not supported here: run one process per host with --device xla")
    owned = False
    if not dist.is_initialized():
        missing = [k for k in TORCHRUN_ENV if k not in os.environ]
        if missing:
            raise HwpruneError(
                f"train_ddp needs torchrun's environment ({', '.join(missing)} unset): "
                "launch with torchrun --nproc_per_node N ..."
            )
        if kind == "cuda" and not torch.cuda.is_available():
            raise HwpruneError("device 'cuda' requested but CUDA is not available here: use --device cpu")
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", init_method="env://")
        owned = True
    rank, world = dist.get_rank(), dist.get_world_size()
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(1, torch.cuda.device_count())))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    return Runtime(dev, rank, world), owned


def train_ddp(
    model: nn.Module,
    train_dataset: Dataset,
    test_dataset: Dataset | None,
    config: TrainConfig | None = None,
    weight_mask: WeightMask | None = None,
    channel_mask: ChannelMask | None = None,
    graph=None,
    num_workers: int = 0,
    objective=None,
) -> TrainResult:
    """Train ``model`` with DistributedDataParallel; call it on every rank with the same arguments.

    Args:
        model: The classifier (same structure on every rank; rank 0's initial weights win).
        train_dataset: The whole training set (each rank reads its share).
        test_dataset: The whole test set, or None to skip evaluation.
        config: The configuration; ``batch_size`` is the global batch.
        weight_mask: Unstructured mask to enforce on every rank.
        channel_mask: Channel mask to enforce on every rank.
        graph: The channel mask's graph (mapped from one training sample when None).
        num_workers: DataLoader workers per rank.
        objective: What a training method adds to the loss (see :func:`~hwprune.train.loop.fit`).

    Returns:
        The :class:`TrainResult` (identical metrics on every rank; checkpoints only on rank 0).
    """
    config = config or TrainConfig()
    runtime, owned = init_distributed(config.device)
    try:
        world, rank = runtime.world_size, runtime.rank
        per_rank = config.batch_size // world
        if per_rank < 1:
            raise HwpruneError(f"batch_size {config.batch_size} is smaller than the {world} ranks: raise it")
        model.to(runtime.device)
        enforcer = make_enforcer(model, weight_mask, channel_mask, graph, train_dataset)
        enforcer.apply()
        sampler = DistributedSampler(train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
        train_loader = DataLoader(train_dataset, batch_size=per_rank, sampler=sampler, num_workers=num_workers)
        test_loader = None
        if test_dataset is not None:
            shard = Subset(test_dataset, range(rank, len(test_dataset), world))
            test_loader = DataLoader(shard, batch_size=per_rank, shuffle=False, num_workers=num_workers)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return fit(
            model, train_loader, test_loader, config, runtime, enforcer, net=net, sampler=sampler, objective=objective
        )
    finally:
        if owned:
            dist.destroy_process_group()
