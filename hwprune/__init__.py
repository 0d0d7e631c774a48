"""hwprune: hardware-aware pruning of your own PyTorch model to a measured latency, FLOPs or params budget.

The public API (see docs/api.md):

    hwprune.map(model, example_inputs)                      -> ChannelGraph
    hwprune.prune(model, example_inputs, latency=0.5, ...)  -> PruneResult (.model, .mask, .report, .save_onnx)
    hwprune.profile(model, example_inputs, backend=...)     -> LUT
    hwprune.export_onnx(model, mask, example_inputs, path)  -> (compacted module, ExportReport)
    hwprune.measure(model_or_onnx, example_inputs, backend=...) -> Measurement
    hwprune.evaluate(model_or_onnx, data, mask=..., weights=...) -> Evaluation (accuracy per split, size)
    hwprune.prune_train(model, example_inputs, train_data, test_data, prune_percent=75, n_rounds=25, ...)
    hwprune.gate(model, train_loader, test_loader, config=GatingConfig(...), lut=...) -> GateResult (.mask)

map, prune, export_onnx and evaluate also take an ONNX file's path instead of a module.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = [
    "map",
    "prune",
    "profile",
    "export_onnx",
    "measure",
    "evaluate",
    "prune_train",
    "gate",
    "PruneResult",
    "ChannelMask",
    "HwpruneError",
]

from hwprune import prune  # noqa: E402 (a callable package: hwprune.prune(model, ...) is hwprune.api.prune)


def __getattr__(name: str):
    """Load the API on first use: `hwprune --help` and the error module stay free of torch's import time."""
    if name in (
        "map",
        "profile",
        "export_onnx",
        "measure",
        "evaluate",
        "prune_train",
        "PruneResult",
    ):  # prune: the callable package
        from hwprune import api

        return getattr(api, name)
    if name == "gate":  # GATOR channel gating (docs/gating.md)
        from hwprune.prune.gating import gate

        return gate
    if name == "ChannelMask":
        from hwprune.prune.masks import ChannelMask

        return ChannelMask
    if name == "HwpruneError":
        from hwprune.errors import HwpruneError

        return HwpruneError
    raise AttributeError(f"module 'hwprune' has no attribute {name!r}")
