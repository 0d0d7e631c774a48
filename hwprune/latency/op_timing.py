"""Per-operator timings: how long each conv/linear op took in a whole-network run, by weight tensor.

A whole-network timing teaches the latency model one number per mask; the backend's own per-node
timings of the same model say how that time splits over its ops, so one measured mask informs the
cost term of every op at once. Backends that can report them implement
:meth:`hwprune.latency.backends.LatencyBackend.op_times`: onnxruntime through session profiling,
PyTorch eager through module hooks.

onnxruntime times the *optimised* graph, whose nodes are fused (conv + bias + add + activation) and
renamed (``relu_3_nchwc``, ``fused node_linear``, ``node_MatMul_1/MatMulAddFusion``): a node's name,
cut to the tensor or node it was built from, is traced back through the elementwise ops ORT fuses
into a conv or matmul to that op's weight initializer. Time of nodes that reach no weight (pooling,
reshapes, layout reorders) is reported as unattributed.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np

WEIGHTED_ONNX_OPS = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}  # op -> input index of its weight
# ops ORT fuses into the conv/matmul before them: a fused node's name may be that of their output
FUSABLE_ONNX_OPS = {
    "Relu", "Clip", "Add", "Sum", "Sigmoid", "Mul", "HardSigmoid", "HardSwish", "LeakyRelu", "Tanh",
    "BatchNormalization", "Identity", "Gelu", "Erf", "Div", "Transpose", "Reshape",
}  # fmt: skip


@dataclass(frozen=True)
class OpTimes:
    """Median per-run time (ms) of each op, keyed by its weight tensor, from ``runs`` profiled runs."""

    per_weight_ms: dict[str, float]
    total_ms: float  # median of the profiled runs' own durations
    unattributed_ms: float  # node time that reached no weight (pooling, reshapes, reorders)
    runs: int


def onnx_weight_owners(model) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Two maps over an ONNX graph: exact and nearby weights.

    ``exact``: node name or output tensor of a conv/matmul whose weight is an initializer -> that
    weight. ``nearby``: name or output of a fusable elementwise node -> the weights reachable by
    walking back through fusable nodes, nearest first (ORT names a fused node after its last op).
    """
    initializers = {i.name for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    exact: dict[str, str] = {}
    for node in model.graph.node:
        index = WEIGHTED_ONNX_OPS.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] in initializers:
            for key in (node.name, *node.output):
                exact[key] = node.input[index]
    nearby: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in FUSABLE_ONNX_OPS:
            continue
        found, frontier, seen = [], list(node.input), set()
        while frontier and len(seen) < 64:  # breadth first: the nearest conv is the one fused
            nxt = []
            for tensor in frontier:
                if tensor in seen or tensor not in producer:
                    continue
                seen.add(tensor)
                if tensor in exact and exact[tensor] not in found:
                    found.append(exact[tensor])
                elif producer[tensor].op_type in FUSABLE_ONNX_OPS:
                    nxt.extend(producer[tensor].input)
            if found:
                break
            frontier = nxt
        for key in (node.name, *node.output):
            nearby[key] = found
    return exact, nearby


def ort_node_key(event_name: str) -> str:
    """The source node or tensor an optimised node's profile event is named after."""
    name = event_name.removesuffix("_kernel_time").removeprefix("fused ")
    name = name.split("/", 1)[0]  # node_MatMul_1/MatMulAddFusion
    return name.removesuffix("_nchwc")


def attribute_ort_profile(events: list[dict], model) -> tuple[list[dict[str, float]], list[float], list[float]]:
    """Per run: ms per weight, the run's duration (ms) and its unattributed node time (ms)."""
    exact, nearby = onnx_weight_owners(model)
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    keys = {ort_node_key(e["name"]) for e in nodes}
    claimed = {exact[k] for k in keys if k in exact}
    owner: dict[str, str | None] = {}
    for key in keys:
        if key in exact:
            owner[key] = exact[key]
        else:  # a fused node named after its activation: the nearest weight no other node owns
            owner[key] = next((w for w in nearby.get(key, []) if w not in claimed), None)
            if owner[key] is not None:
                claimed.add(owner[key])
    per_run, durations, unattributed = [], [], []
    for run in runs:
        start, end = run["ts"], run["ts"] + run["dur"]
        times: dict[str, float] = {}
        rest = 0.0
        for e in nodes:
            if start <= e["ts"] <= end:
                weight = owner[ort_node_key(e["name"])]
                if weight is None:
                    rest += e["dur"] / 1e3
                else:
                    times[weight] = times.get(weight, 0.0) + e["dur"] / 1e3
        per_run.append(times)
        durations.append(run["dur"] / 1e3)
        unattributed.append(rest)
    return per_run, durations, unattributed


def summarise(per_run: list[dict[str, float]], durations: list[float], unattributed: list[float]) -> OpTimes:
    """Medians over runs (an op missing from a run counts 0 ms there)."""
    weights = sorted({w for run in per_run for w in run})
    per_weight = {w: float(statistics.median(run.get(w, 0.0) for run in per_run)) for w in weights}
    return OpTimes(per_weight, float(np.median(durations)), float(np.median(unattributed)), len(per_run))


def ort_op_times(model, example, threads: int, runs: int, warmup: int = 2) -> OpTimes:
    """Profile ``runs`` runs of ``model`` (an ONNX file or ModelProto) in a CPU session, after ``warmup``."""
    import onnx

    from hwprune.export.onnx_export import ort_session

    graph = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    with tempfile.TemporaryDirectory(prefix="hwprune-ortprof-") as tmp:
        session = ort_session(model, intra_threads=threads, inter_threads=1, profile_prefix=os.path.join(tmp, "p"))
        feed = {session.get_inputs()[0].name: example.detach().cpu().numpy()}
        for _ in range(warmup + runs):
            session.run(None, feed)
        with open(session.end_profiling()) as fh:
            events = json.load(fh)
    per_run, durations, rest = attribute_ort_profile(events, graph)
    return summarise(per_run[warmup:], durations[warmup:], rest[warmup:])


def torch_op_times(module, example, runs: int, warmup: int = 2) -> OpTimes:
    """Time each submodule that owns a weight tensor (conv, linear) with forward hooks, eager on the host.

    Eager CPU ops are synchronous, so a module's pre- and post-hook bracket its whole computation.
    Functional calls on parameters have no module to hook; their time stays unattributed.
    """
    import torch

    owners = {
        name: f"{name}.weight" if name else "weight"
        for name, m in module.named_modules()
        if isinstance(getattr(m, "weight", None), torch.nn.Parameter) and m.weight.dim() >= 2
    }
    current: dict[str, float] = {}
    started: dict[str, float] = {}
    handles = []
    for name, m in module.named_modules():
        if name in owners:
            handles.append(
                m.register_forward_pre_hook(lambda _m, _a, n=name: started.__setitem__(n, time.perf_counter()))
            )
            handles.append(
                m.register_forward_hook(
                    lambda _m, _a, _o, n=name: current.__setitem__(
                        owners[n], current.get(owners[n], 0.0) + (time.perf_counter() - started[n]) * 1e3
                    )
                )
            )
    per_run, durations, unattributed = [], [], []
    try:
        with torch.inference_mode():
            for i in range(warmup + runs):
                current.clear()
                start = time.perf_counter()
                module(example)
                total = (time.perf_counter() - start) * 1e3
                if i >= warmup:
                    per_run.append(dict(current))
                    durations.append(total)
                    unattributed.append(max(total - sum(current.values()), 0.0))
    finally:
        for h in handles:
            h.remove()
    return summarise(per_run, durations, unattributed)
