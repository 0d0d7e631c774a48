"""Scoring stage: channel importances (on the user's data where a method needs it) and ratio masks."""

from __future__ import annotations

import warnings

import torch

from hwprune.errors import HwpruneError, HwpruneWarning
from hwprune.graph_mapper import ChannelGraph
from hwprune.prune.channel import uniform_channel_mask
from hwprune.prune.importance import CHANNEL_IMPORTANCES
from hwprune.prune.masks import ChannelMask
from hwprune.workflow.inputs import ModelInput, OnnxInput

IMPORTANCE_SAMPLES = 2560  # the gradient-flow framework's --imp_samples: 20 mini-batches of 128
IMPORTANCE_BATCH = 128


def importance_scores(
    job: ModelInput | OnnxInput,
    graph: ChannelGraph,
    name: str,
    data: str | None = None,
    data_dir: str | None = None,
    seed: int = 0,
    samples: int = IMPORTANCE_SAMPLES,
) -> dict:
    """Channel importances by name; gradient-based ones average over ``samples`` examples of ``data``.

    The samples come in mini-batches (``IMPORTANCE_BATCH``), so E[g²] is a mean of per-batch squares, as
    Fisher/Taylor define it, not the square of one batch's mean gradient.
    """
    if isinstance(job, OnnxInput):
        from hwprune.graph_mapper.onnx_mapper import check_onnx_importance

        check_onnx_importance(name)
    scorer = CHANNEL_IMPORTANCES.get(name)
    opts = {"seed": seed} if name == "random" else {}
    if not scorer.needs_data:
        return scorer(job.model, graph, None, **opts)
    if data is None:
        raise HwpruneError(
            f"importance {name!r} needs data: pass --data digits (images) or --data text "
            "(language models), both offline, or a dataset in --data-dir"
        )
    if not isinstance(data, str):  # the user's own loader (or any iterable of (x, y) batches)
        return scorer(job.model, graph, first_samples(data, samples))
    from hwprune.data.text import model_vocab_size

    batches = importance_batches(job.example, data, data_dir, samples, seed, model_vocab_size(job.model))
    return scorer(job.model, graph, batches)


def importance_batches(
    example: torch.Tensor,
    data: str,
    data_dir: str | None,
    samples: int,
    seed: int = 0,
    vocab_size: int | None = None,
) -> list:
    """The first ``samples`` shuffled training examples of ``data``, as (x, y) mini-batches.

    A text dataset gives sequences of the example's token count with ids below ``vocab_size`` (the model's).
    """
    from hwprune.data import split_loader

    if samples < 1:
        raise HwpruneError(f"--imp-samples is a number of examples, at least 1 (got {samples})")
    batch = min(IMPORTANCE_BATCH, samples)
    loader = split_loader(data, "train", example, batch, True, seed, data_dir, vocab_size=vocab_size)
    return first_samples(loader, samples)


def first_samples(batches, samples: int) -> list:
    """The batches of an iterable of (x, y) up to ``samples`` examples (the last one cut to fit)."""
    out, taken = [], 0
    for x, y in batches:
        x, y = x[: samples - taken], y[: samples - taken]
        out.append((x, y))
        taken += len(y)
        if taken >= samples:
            break
    if not out:
        raise HwpruneError("the data for importance scoring yielded no batches: pass a non-empty DataLoader")
    return out


def warn_nothing_pruned(graph: ChannelGraph) -> None:
    """Say so when a mask removes nothing: an export would otherwise 'succeed' with the model unchanged."""
    inexact = sum(g.prunable and not g.exact for g in graph.groups)
    why = (
        f"its {inexact} prunable group(s) are inexact (a norm mixes their channels; pruned only on request)"
        if inexact
        else "no channel group is prunable"
    )
    warnings.warn(
        f"nothing is pruned in {graph.model_name}: {why}; `hwprune map` lists why each group is frozen",
        HwpruneWarning,
        stacklevel=2,
    )


def make_mask(
    job: ModelInput | OnnxInput,
    graph: ChannelGraph,
    method: str,
    ratio: float,
    seed: int = 0,
    data: str | None = None,
    data_dir: str | None = None,
    imp_samples: int = IMPORTANCE_SAMPLES,
) -> ChannelMask:
    """Uniform pruning: remove ``ratio`` of every prunable group's channels, the least important first."""
    if not 0.0 <= ratio < 1.0:
        raise HwpruneError(f"--ratio is the share of channels to remove per group, in [0, 1) (got {ratio})")
    scores = importance_scores(job, graph, method, data, data_dir, seed=seed, samples=imp_samples)
    mask = uniform_channel_mask(graph, scores, ratio)
    if ratio > 0 and not mask.pruned_groups():
        warn_nothing_pruned(graph)
    mask.meta.update({"method": method, "ratio": ratio, "input_shape": list(job.example.shape)})
    if CHANNEL_IMPORTANCES.get(method).needs_data:
        mask.meta.update({"data": data, "imp_samples": imp_samples})
    return mask
