"""ONNX export of token-id models with a dynamic token axis, verified in onnxruntime at two lengths (issue 16).

A pruned Llama / GPT-2 ships a file whose token axis is a name (``dim_param``), and that file matches the
compacted model at the example's length and at others. Negative controls: a file exported static is reported
static (no second comparison, not a failure) and refuses another length; a weight corrupted in the file is
caught at the second length; a length that the exporter baked into an op passes at the example's length and is
caught at the second one, and the export then ships static, saying why; image models stay static.
"""

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.export import onnx_export
from hwprune.export.onnx_export import export_onnx, input_shape, run_onnx
from hwprune.export.pipeline import compare_onnx, export_checked, export_pruned, second_input
from hwprune.export.verify import max_rel_diff
from hwprune.graph_mapper import build_channel_graph
from hwprune.prune.channel import random_scores, uniform_channel_mask

pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from hwprune.models.hf import output_tensor  # noqa: E402
from tests.test_transformers import _mapped  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """``family -> (compacted model, example, report, path)``: each decoder pruned once with a random 40 % mask."""
    cache = {}

    def get(family):
        if family not in cache:
            model, x, graph = _mapped(family)
            mask = uniform_channel_mask(graph, random_scores(graph, seed=1), 0.4)
            path = tmp_path_factory.mktemp(family) / f"{family}.onnx"
            compacted, report = export_pruned(model, graph, mask, x, path)
            cache[family] = compacted, x, report, path
        return cache[family]

    return get


def _declared_dims(path):
    """The file's input dimensions as onnx stores them: ('param', name) or ('value', number)."""
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [("param", d.dim_param) if d.HasField("dim_param") else ("value", d.dim_value) for d in dims]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pruned_decoder_ships_a_named_token_axis_that_matches_at_two_lengths(family, shipped):
    compacted, x, report, path = shipped(family)
    assert report.params_after < report.params_before
    assert _declared_dims(path)[1] == ("param", "tokens")  # symbolic, not the example's 32
    assert report.onnx_input_shape[1] == "tokens" and report.onnx_second_shape == [x.shape[0], x.shape[1] // 2]
    assert report.onnx_max_rel_diff <= TOLERANCE and report.onnx_second_max_rel_diff <= TOLERANCE
    assert "also checked in onnxruntime at input [1, 16]" in report.table()
    assert not [n for n in report.notes if "tokens only" in n]
    for tokens in (x.shape[1], 11):  # the example's length and one the pipeline did not check
        ids = x[:, :tokens]
        with torch.no_grad():
            want = output_tensor(compacted(ids))
        got = run_onnx(path, ids)[0]
        assert got.shape == tuple(want.shape) and max_rel_diff(got, want) <= TOLERANCE


def test_a_corrupted_weight_is_caught_at_the_second_length(shipped, tmp_path):
    """Negative control: the second comparison has power: one weight changed in the shipped file shows there."""
    compacted, x, _, path = shipped("gpt2")
    model = onnx.load(str(path))
    weight = next(t for t in model.graph.initializer if t.name == "transformer.h.0.mlp.c_fc.weight")
    values = onnx.numpy_helper.to_array(weight).copy()
    values[tuple(np.unravel_index(np.abs(values).argmax(), values.shape))] *= -3
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(model, str(tmp_path / "corrupted.onnx"))
    check = compare_onnx(compacted, x, tmp_path / "corrupted.onnx")
    assert check.second_shape == [1, 16] and check.second_diff > 1e-2
    assert "differs from the model by" in check.second_failure(TOLERANCE, "your weights")


def test_a_static_file_is_reported_static_not_failed(shipped, tmp_path):
    """Negative control: a file exported at another length without dynamic axes declares its numbers, gets no
    second comparison (None, which is not a failure) and onnxruntime refuses the example's length on it."""
    compacted, x, _, _ = shipped("gpt2")
    static = tmp_path / "static.onnx"
    export_onnx(compacted, x[:, :20], static, dynamic=False)
    assert _declared_dims(static) == [("value", 1), ("value", 20)]
    check = compare_onnx(compacted, x[:, :20], static)
    assert check.input_shape == [1, 20] and check.diff <= TOLERANCE
    assert check.second_shape is None and check.second_diff is None and check.second_failure(TOLERANCE, "") is None
    with pytest.raises(Exception, match="dimensions"):
        run_onnx(static, x)


class BakedLength(nn.Module):
    """Averages over the tokens by dividing by ``int(tokens)``: TorchScript's tracer writes the example's length
    into the graph as a constant, so a file with dynamic axes is right at that length only."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.mix, self.head = nn.Embedding(20, 16), nn.Linear(16, 16), nn.Linear(16, 20)

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.embed(ids))).sum(1) / int(ids.shape[1]))


def test_a_length_baked_into_the_graph_is_caught_and_shipped_static(tmp_path):
    torch.manual_seed(0)
    model, ids = BakedLength().eval(), torch.randint(0, 20, (2, 12))
    assert export_onnx(model, ids, tmp_path / "dynamic.onnx", "torchscript") == "torchscript"
    check = compare_onnx(model, ids, tmp_path / "dynamic.onnx")
    assert check.input_shape == ["batch", "tokens"] and check.diff <= TOLERANCE  # right at the example
    assert check.second_shape == [4, 6] and check.second_diff > 0.1  # wrong at another length: caught
    shipped = export_checked(model, ids, tmp_path / "shipped.onnx", "torchscript")
    assert shipped.input_shape == [2, 12] and shipped.diff <= TOLERANCE
    assert "differs from the model" in shipped.notes[0] and "exported again static" in shipped.notes[0]
    graph = build_channel_graph(model, ids, "baked", front_end="export")
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), 0.5)
    _, report = export_pruned(model, graph, mask, ids, tmp_path / "pruned.onnx", exporter="torchscript")
    assert report.onnx_input_shape == [2, 12] and report.onnx_second_shape is None
    assert any("exported again static" in n for n in report.notes)
    assert any("runs at 12 tokens only" in n for n in report.notes)


def test_an_axis_the_exporter_cannot_capture_falls_back_to_static(monkeypatch, tmp_path):
    """A dynamic export that raises never fails the user's export: the same exporter writes it static and the
    notes say why."""
    real = onnx_export._export

    def no_dynamic(model, example, path, exporter, axes, large):
        if axes:
            raise RuntimeError("Constraints violated (tokens)!")
        return real(model, example, path, exporter, axes, large)

    monkeypatch.setattr(onnx_export, "_export", no_dynamic)
    torch.manual_seed(0)
    model, ids = BakedLength().eval(), torch.randint(0, 20, (1, 8))
    check = export_checked(model, ids, tmp_path / "m.onnx", "dynamo")
    assert check.exporter == "dynamo" and check.input_shape == [1, 8] and check.second_diff is None
    assert "could not make the token axis dynamic (Constraints violated (tokens)!)" in check.notes[0]


def test_image_inputs_stay_static(tmp_path):
    model, x = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 5)).eval(), torch.randn(2, 3, 8, 8)
    export_onnx(model, x, tmp_path / "image.onnx")
    assert input_shape(tmp_path / "image.onnx") == [2, 3, 8, 8]
    assert second_input(x, ["batch", 3, 8, 8]) is None  # only token ids get a second input
