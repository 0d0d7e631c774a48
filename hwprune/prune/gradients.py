"""Gradient helpers shared by the channel importances and the at-init weight scorers.

One scoring mode (module modes, ``requires_grad`` and, in train mode, BN statistics restored afterwards),
one gradient call (zeros for parameters the output does not reach) and one Hessian-vector product.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from hwprune.errors import HwpruneError

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@contextmanager
def scoring_state(model: nn.Module, params: Iterable[nn.Parameter], train_mode: bool = False) -> Iterator[None]:
    """Put ``model`` in the mode used for scoring, and back exactly as it was afterwards.

    Restores each module's train/eval flag, the ``requires_grad`` of ``params`` and, in train mode, the
    buffers (batch-norm running statistics that a forward pass would update).
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(params)
    flags = [p.requires_grad for p in params]
    saved = {n: b.detach().clone() for n, b in model.named_buffers()} if train_mode else {}
    model.train(train_mode)
    for p in params:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        if saved:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    if n in saved:
                        b.copy_(saved[n])


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model without either)."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def grads(
    output: torch.Tensor,
    params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    create_graph: bool = False,
) -> list[torch.Tensor]:
    """Gradient of ``output`` w.r.t. ``params`` (a list or a name -> tensor dict), zeros where it does not reach."""
    plist = list(params.values()) if isinstance(params, Mapping) else list(params)
    if not output.requires_grad:
        return [torch.zeros_like(p) for p in plist]
    gs = torch.autograd.grad(output, plist, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(gs, plist, strict=True)]


def batch_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, temperature: float = 1.0):
    """``loss_fn(model(x) / temperature, y)`` on the model's device.

    A language model's batch is ``(token ids, token ids)`` and its output carries ``logits [batch, tokens,
    vocab]`` (a Hugging Face ``CausalLMOutput``, or a plain tensor of that shape): the loss is then next-token
    prediction, position ``t`` scored against token ``t + 1``.
    """
    dev = model_device(model)
    out = model(x.to(dev))
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None:
        raise HwpruneError(f"{type(model).__name__} returns no logits to take a loss of ({type(out).__name__})")
    y = y.to(dev)
    if logits.dim() == 3 and y.dim() == 2 and y.shape == logits.shape[:2] and not y.is_floating_point():
        logits, y = logits[:, :-1].flatten(0, 1), y[:, 1:].flatten()
    return loss_fn(logits / temperature, y)


def hessian_vector_product(
    model: nn.Module,
    batches: Batches,
    params: Sequence[torch.Tensor],
    vector: Sequence[torch.Tensor],
    loss_fn: Callable,
    temperature: float = 1.0,
    weight: Callable[[torch.Tensor], float] = lambda x: 1.0,
) -> list[torch.Tensor]:
    """``Σ_b weight(x_b) · ∇(v · ∇L_b)``: the Hessian of the weighted batch-loss sum times ``vector``.

    Double backward through each batch's gradient (``create_graph``); accumulated in float64.
    """
    out = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for x, y in batches:
        g = grads(batch_loss(model, x, y, loss_fn, temperature), params, create_graph=True)
        dot = sum((v * gi).sum() for v, gi in zip(vector, g, strict=True))
        for acc, h in zip(out, grads(dot, params), strict=True):
            acc += weight(x) * h.double()
    return out
