"""Where training runs: the device (cpu, cuda, xla) and the process group (one process or DDP ranks).

XLA (torch_xla, PJRT) builds a lazy graph; :meth:`Runtime.step_done` cuts it once per optimizer step
(``torch_xla.sync()``), so each step compiles once and then replays. PJRT_DEVICE must name the backend
(CPU or TPU); torch_xla's silent fallback to CPU is refused so a TPU job never trains on the host.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch

from hwprune.errors import HwpruneError


def resolve_device(name: str | torch.device) -> torch.device:
    """Return the torch device for ``cpu``, ``cuda``, ``cuda:N`` or ``xla``.

    Raises:
        HwpruneError: When CUDA is not available, torch_xla is not installed, or PJRT_DEVICE is unset.
    """
    if isinstance(name, torch.device):
        return name
    kind = name.split(":")[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise HwpruneError(f"device {name!r} requested but CUDA is not available here: use --device cpu")
        return torch.device(name)
    if kind == "xla":
        return _xla_device()
    raise HwpruneError(f"unknown device {name!r}; use cpu, cuda, cuda:N or xla")


def _xla_device() -> torch.device:
    if importlib.util.find_spec("torch_xla") is None:
        raise HwpruneError("device 'xla' needs torch_xla, which is not installed: pip install torch-xla (or use cpu)")
    if not os.environ.get("PJRT_DEVICE"):
        raise HwpruneError("device 'xla' needs PJRT_DEVICE set: run with PJRT_DEVICE=CPU (host) or PJRT_DEVICE=TPU")
    import torch_xla

    return torch_xla.device()


def is_xla(device: torch.device) -> bool:
    return device.type == "xla"


def wait(device: torch.device) -> None:
    """Block until the work queued on ``device`` is done (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif is_xla(device):
        import torch_xla
        import torch_xla.core.xla_model as xm

        torch_xla.sync()
        xm.wait_device_ops()


@dataclass
class Runtime:
    """The device and this process's place among the training processes.

    Attributes:
        device: Where tensors live.
        rank: This process's rank (0 without DDP).
        world_size: Number of processes (1 without DDP).
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Step ``optimizer``; on XLA through ``xm.optimizer_step`` (reduces gradients across replicas)."""
        if is_xla(self.device):
            import torch_xla.core.xla_model as xm

            xm.optimizer_step(optimizer)
        else:
            optimizer.step()

    def step_done(self) -> None:
        """Mark the end of a step: on XLA, cut and run the lazy graph (``torch_xla.sync()``)."""
        if is_xla(self.device):
            import torch_xla

            torch_xla.sync()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (no-op in one process); returns it."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor
