"""Evaluation stage: accuracy of a saved model per split, with its params, FLOPs and compression.

Three forms are evaluated as they would be used: a dense module, a module pruned by a mask (compacted,
so what runs is what ships), and an ONNX file run in onnxruntime (the very artifact a user deploys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.prune.masks import ChannelMask
from hwprune.train.loop import EvalResult


@dataclass
class Evaluation:
    """Accuracy per split (top-1/top-5 fractions) and the size of the model that produced it."""

    model: str
    splits: dict[str, EvalResult]
    params: int
    flops: int
    flops_counter: str
    params_dense: int | None = None  # the unpruned model's, when a mask was applied
    flops_dense: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def compression(self) -> float | None:
        """Dense params / evaluated params (None without a dense reference)."""
        return None if not self.params_dense else self.params_dense / self.params

    def table(self) -> str:
        lines = [f"## {self.model}: evaluation", "", "| split | top-1 | top-5 | loss |", "|---|---:|---:|---:|"]
        for split, r in self.splits.items():
            lines.append(f"| {split} | {r.top1:.4f} | {r.top5:.4f} | {r.loss:.4f} |")
        lines += ["", "| | evaluated | dense | ratio |", "|---|---:|---:|---:|"]
        for name, now, dense in (("params", self.params, self.params_dense), ("FLOPs", self.flops, self.flops_dense)):
            ratio = f"{now / dense:.3f}" if dense else ""
            lines.append(f"| {name} | {now:,} | {f'{dense:,}' if dense else ''} | {ratio} |")
        lines.append(f"\nFLOPs: {self.flops_counter}, one multiply-add counts as one FLOP.")
        if self.compression is not None:
            lines.append(f"Compression (dense params / params): {self.compression:.2f}x.")
        return "\n".join(lines + [f"Note: {n}" for n in self.notes])


class OnnxClassifier(nn.Module):
    """An ONNX file run by onnxruntime behind ``forward``, so the trainer's evaluation runs it unchanged.

    A file exported at a fixed batch size is fed chunks of that size.
    """

    def __init__(self, path: Path, threads: int = 1) -> None:
        from hwprune.export.onnx_export import ort_session

        super().__init__()
        self.session = ort_session(path, intra_threads=threads)
        self.input = self.session.get_inputs()[0]
        self.fixed_batch = self.input.shape[0] if isinstance(self.input.shape[0], int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chunks = x.split(self.fixed_batch) if self.fixed_batch else [x]
        outs = [self.session.run(None, {self.input.name: c.cpu().numpy().astype(np.float32)})[0] for c in chunks]
        return torch.from_numpy(np.concatenate(outs))


def evaluate_splits(model: nn.Module, loaders: dict[str, object]) -> dict[str, EvalResult]:
    """Top-1/top-5/loss of ``model`` on each split's loader (the trainer's evaluation, on CPU)."""
    from hwprune.train import evaluate

    out = {}
    for split, loader in loaders.items():
        out[split] = evaluate(model, loader, "cpu")
        if out[split].top1 != out[split].top1:  # NaN: no samples
            raise HwpruneError(f"the {split} data yielded no samples: check --data / --data-dir")
    return out


def evaluate_pruned(
    model: nn.Module,
    example: torch.Tensor,
    loaders: dict[str, object],
    mask: ChannelMask | None = None,
    pruned_state: dict[str, torch.Tensor] | None = None,
    name: str = "model",
) -> Evaluation:
    """Evaluate ``model``, or with ``mask`` its compacted form (loaded with ``pruned_state`` when given)."""
    from hwprune.graph_mapper.flops import count_flops

    dense = count_flops(model, example)
    evaluated, notes = model, []
    if mask is not None:
        from hwprune.export.compact import compact_model
        from hwprune.graph_mapper import build_channel_graph

        graph = build_channel_graph(model, example, mask.model or name)
        mask.validate(graph)
        evaluated = compact_model(graph, mask)
        notes.append(f"channels removed by the mask ({len(mask.pruned_groups())} groups pruned), then evaluated")
        if pruned_state is not None:
            from hwprune.models.weights import apply_state

            apply_state(evaluated, pruned_state, "the pruned model's weights")
            notes.append("weights of the pruned model loaded after compaction")
    after = count_flops(evaluated, example) if mask is not None else dense
    splits = evaluate_splits(evaluated, loaders)
    return Evaluation(
        name,
        splits,
        after.params,
        after.flops,
        after.counter,
        dense.params if mask is not None else None,
        dense.flops if mask is not None else None,
        notes,
    )


def evaluate_onnx(path: Path, loaders: dict[str, object], threads: int = 1, input_shape=None) -> Evaluation:
    """Evaluate an ONNX file: accuracy in onnxruntime, params from its initializers, MACs from its graph."""
    from hwprune.export.onnx_compact import float_params
    from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph

    graph = build_onnx_channel_graph(path, input_shape=input_shape)
    splits = evaluate_splits(OnnxClassifier(path, threads), loaders)
    return Evaluation(
        graph.model_name,
        splits,
        float_params(graph.gm),
        int(graph.total_macs),
        "hwprune (conv/linear MACs of the ONNX graph)",
        notes=[f"run in onnxruntime ({threads} thread(s)): the file itself, as deployed"],
    )
