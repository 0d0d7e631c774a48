"""ONNX models over protobuf's 2 GB limit: exported with external weights, mapped, compacted, verified, shipped.

A real 2 GB model is too heavy for CI, so the limit is lowered to 16 kB and protobuf's refusal is simulated: every
in-memory serialisation of a model over the (lowered) limit raises, as protobuf does over 2 GB. The negative
control runs the same pipeline with the refusal but the limit left at 2 GB: it must fail, so the test can.
"""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from hwprune.export import large_onnx
from hwprune.export.onnx_compact import prune_onnx_file
from hwprune.export.onnx_export import check_onnx, export_onnx, run_onnx
from hwprune.export.pipeline import export_pruned
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph
from hwprune.prune.channel import random_scores, uniform_channel_mask

LIMIT = 16_000


def net():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    for m in model.modules():  # informative statistics, not the init values
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(1, 3, 16, 16)


@pytest.fixture
def protobuf_cap(monkeypatch):
    """In-memory uses of a model over LIMIT bytes raise, as protobuf does over 2 GB."""

    def over(model) -> bool:
        return isinstance(model, onnx.ModelProto) and model.ByteSize() > LIMIT

    def refuse(real, external_ok=False):
        def call(model, *args, **kwargs):
            if over(model) and not (external_ok and kwargs.get("save_as_external_data")):
                raise ValueError("simulated: message exceeds protobuf's maximum size")
            return real(model, *args, **kwargs)

        return call

    monkeypatch.setattr(onnx.checker, "check_model", refuse(onnx.checker.check_model))
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", refuse(onnx.shape_inference.infer_shapes))
    monkeypatch.setattr(onnx, "save", refuse(onnx.save, external_ok=True))
    monkeypatch.setattr(onnx, "save_model", refuse(onnx.save_model, external_ok=True))
    real_session = onnxruntime.InferenceSession

    def session(source, *args, **kwargs):
        if isinstance(source, bytes) and len(source) > LIMIT:
            raise ValueError("simulated: model bytes exceed protobuf's maximum size")
        return real_session(source, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)


@pytest.fixture
def low_limits(monkeypatch):
    monkeypatch.setattr(large_onnx, "PROTO_LIMIT", LIMIT)
    monkeypatch.setattr(large_onnx, "EXPORT_LIMIT", LIMIT)


def test_a_model_over_the_limit_is_exported_mapped_compacted_and_verified_with_external_weights(
    protobuf_cap, low_limits, tmp_path
):
    model, x = net()
    src = tmp_path / "dense.onnx"
    export_onnx(model, x, src)
    assert large_onnx.data_file(src).stat().st_size > LIMIT and src.stat().st_size < LIMIT  # weights beside it
    check_onnx(src)
    np.testing.assert_allclose(run_onnx(src, x)[0], model(x).detach().numpy(), rtol=1e-4, atol=1e-5)

    graph = build_onnx_channel_graph(src)
    mask = uniform_channel_mask(graph, random_scores(graph, 1), 0.4)
    out = tmp_path / "out"
    out.mkdir()
    report = prune_onnx_file(src, mask, out / "pruned.onnx", graph=graph)
    assert report.max_rel_diff <= 1e-4 and report.random_max_rel_diff <= 1e-4
    assert report.params_after < report.params_before
    assert sorted(p.name for p in out.iterdir()) == ["pruned.onnx", "pruned.onnx.data"]  # nothing staged left
    stored = onnx.load(str(out / "pruned.onnx"), load_external_data=False)
    weights = [t for t in stored.graph.initializer if np.prod(t.dims) * 4 > 1024]  # onnx keeps small ones inline
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)

    fx_graph = build_channel_graph(model, x, "net")
    fx_mask = uniform_channel_mask(fx_graph, random_scores(fx_graph, 1), 0.4)
    _, fx_report = export_pruned(model, fx_graph, fx_mask, x, out / "fx.onnx")
    assert fx_report.onnx_max_rel_diff <= 1e-4 and (out / "fx.onnx.data").exists()


def test_without_the_large_model_path_the_simulated_limit_fails(protobuf_cap, monkeypatch, tmp_path):
    """Negative control: the limit left at 2 GB, so models go through memory, and the simulated refusal bites."""
    model, x = net()
    src = tmp_path / "dense.onnx"
    export_onnx(model, x, src)  # small for the real limit: one file
    assert not large_onnx.data_file(src).exists()
    with pytest.raises(Exception, match="simulated"):
        graph = build_onnx_channel_graph(src)
        prune_onnx_file(src, uniform_channel_mask(graph, random_scores(graph, 1), 0.4), tmp_path / "pruned.onnx")
    assert not (tmp_path / "pruned.onnx").exists()
