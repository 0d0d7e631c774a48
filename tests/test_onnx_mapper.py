"""ONNX front-end: models that exist only as ONNX files are mapped, compacted and verified in
onnxruntime; unknown ops fail closed; the fx and ONNX front-ends find the same groups."""

import dataclasses
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from hwprune.cli import main
from hwprune.errors import HwpruneError, MaskMismatchError, VerificationError
from hwprune.export.onnx_compact import compact_onnx, float_params, masked_onnx, prune_onnx_file, run_model
from hwprune.export.onnx_export import export_onnx
from hwprune.export.verify import max_rel_diff, randomize_for_check
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.crosscheck import match_groups
from hwprune.graph_mapper.onnx_mapper import InitializerParameters, build_onnx_channel_graph, random_feeds
from hwprune.graph_mapper.onnx_ops import attr
from hwprune.models.zoo import zoo_case
from hwprune.prune.channel import random_scores, uniform_channel_mask
from hwprune.prune.importance import CHANNEL_IMPORTANCES
from hwprune.prune.masks import ChannelMask

pytestmark = pytest.mark.onnx

SLOW = {"torchvision:densenet121", "torchvision:convnext_tiny"}
ZOO = [
    ("hwprune:lenet5", None),
    ("hwprune:resnet20", None),
    ("hwprune:mobilenet_v2", None),
    ("torchvision:resnet18", 32),
    ("torchvision:mobilenet_v2", 32),
    ("torchvision:shufflenet_v2_x1_0", 32),
    ("torchvision:efficientnet_b0", 32),
    ("torchvision:densenet121", 32),
    ("torchvision:convnext_tiny", 32),
]
# TorchScript: renamed folded weights, Constant nodes, Shape->Slice arithmetic (shufflenet's chunk)
TORCHSCRIPT = [("hwprune:resnet20", None), ("torchvision:shufflenet_v2_x1_0", 32), ("torchvision:convnext_tiny", 32)]
CASES = [(q, s, "dynamo") for q, s in ZOO] + [(q, s, "torchscript") for q, s in TORCHSCRIPT]


def _param(qualified, size, exporter):
    marks = [pytest.mark.slow] if qualified in SLOW else []
    return pytest.param(qualified, size, exporter, id=f"{qualified}-{exporter}", marks=marks)


PARAMS = [_param(*c) for c in CASES]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, example, ONNX path) per (model, size, exporter), exported once per module."""
    folder, cache = tmp_path_factory.mktemp("onnx-zoo"), {}

    def get(qualified, size, exporter):
        if (qualified, exporter) not in cache:
            model, x = zoo_case(qualified, size)
            path = folder / f"{qualified.replace(':', '_')}_{exporter}.onnx"
            assert export_onnx(model, x, path, exporter) == exporter
            cache[(qualified, exporter)] = (model, x, path)
        return cache[(qualified, exporter)]

    return get


def _run(model: onnx.ModelProto, feeds, path):
    onnx.save(model, str(path))
    return run_model(path, feeds)


@pytest.mark.parametrize(("qualified", "size", "exporter"), PARAMS)
def test_random_mask_compacts_the_file_exactly(qualified, size, exporter, exported, tmp_path):
    _, _, path = exported(qualified, size, exporter)
    graph = build_onnx_channel_graph(path)
    # exact groups only: convnext_tiny's downsampling convs read and write LayerNorm-ed (inexact) streams (0.934)
    assert graph.prunable_groups and graph.prunable_macs_share() > 0.9
    assert all(g.prunable or g.reason for g in graph.groups)
    mask = uniform_channel_mask(graph, random_scores(graph, seed=1), ratio=0.4)
    assert mask.pruned_groups()
    compacted, masked = compact_onnx(graph, mask), masked_onnx(graph, mask)
    # every producer axis lost exactly the removed channels
    before = {t.name: tuple(t.dims) for t in graph.gm.graph.initializer}
    after = {t.name: tuple(t.dims) for t in compacted.graph.initializer}
    removed = {}
    for gid in mask.pruned_groups():
        for sl in graph.groups[gid].producers:
            removed[(sl.tensor, sl.axis)] = removed.get((sl.tensor, sl.axis), 0) + mask.removed(gid) * sl.inner
    for (tensor, axis), n in removed.items():
        assert after[tensor][axis] == before[tensor][axis] - n
    assert float_params(compacted) < 0.75 * float_params(graph.gm)
    feeds = random_feeds(graph.gm, seed=3)
    original = run_model(path, feeds)
    assert max_rel_diff(_run(graph.gm, feeds, tmp_path / "normalised.onnx"), original) <= 1e-6
    reference = _run(masked, feeds, tmp_path / "masked.onnx")
    assert max_rel_diff(_run(compacted, feeds, tmp_path / "compacted.onnx"), reference) <= 1e-4
    assert max_rel_diff(reference, original) > 1e-2  # the mask really changes the model


@pytest.mark.parametrize(("qualified", "size", "exporter"), PARAMS)
def test_fx_and_onnx_front_ends_find_the_same_groups(qualified, size, exporter, exported):
    model, x, path = exported(qualified, size, exporter)
    fx_graph, onnx_graph = build_channel_graph(model, x, qualified), build_onnx_channel_graph(path)
    match = match_groups(fx_graph, onnx_graph)
    assert match.ok, match.differences[:5]
    assert len(match.pairs) == len(fx_graph.groups) == len(onnx_graph.groups)
    for fid, oid in match.pairs:
        assert fx_graph.groups[fid].size == onnx_graph.groups[oid].size
    assert onnx_graph.total_macs == fx_graph.total_macs
    assert onnx_graph.prunable_macs_share() == pytest.approx(fx_graph.prunable_macs_share())
    if exporter == "torchscript" or "convnext" in qualified:  # names or layouts change: matched by value
        assert any(fx_name != name for name, (fx_name, _) in match.resolved.items())


def test_match_groups_reports_disagreements(exported):
    model, x, path = exported("hwprune:resnet20", None, "dynamo")
    fx_graph, onnx_graph = build_channel_graph(model, x), build_onnx_channel_graph(path)
    onnx_graph.groups[3] = dataclasses.replace(onnx_graph.groups[3], prunable=False, reason="test")
    match = match_groups(fx_graph, onnx_graph)
    assert not match.ok
    assert any("prunable True vs False" in d for d in match.differences)


def test_weight_importance_on_initializers_equals_the_pytorch_one(exported):
    """lenet5 has no BatchNorm to fold: its ONNX initializers are its parameters."""
    model, x, path = exported("hwprune:lenet5", None, "dynamo")
    fx_graph, onnx_graph = build_channel_graph(model, x), build_onnx_channel_graph(path)
    match = match_groups(fx_graph, onnx_graph)
    for method in ("l1", "l2"):
        scorer = CHANNEL_IMPORTANCES.get(method)
        fx_scores = scorer(model, fx_graph)
        onnx_scores = scorer(InitializerParameters(onnx_graph.gm), onnx_graph)
        for fid, oid in match.pairs:
            np.testing.assert_allclose(onnx_scores[oid], fx_scores[fid], rtol=1e-5)


class OpsNet(nn.Module):
    """Many ops on prunable channels: split/concat, depthwise x2, grouped conv, instance norm, PReLU, pad,
    resize, ConvTranspose, a channel slice, softmax, Linear on [N, HW, C] (MatMul + Add), a sized
    reshape, an adaptive pool that replicates pixels (GatherND, dynamo only: TorchScript cannot
    export it) and a flatten into a Linear (four positions per channel)."""

    def __init__(self, replicate=False):
        super().__init__()
        self.replicate = replicate
        self.conv1, self.dw = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1, groups=16)
        self.conv2, self.inorm, self.prelu = nn.Conv2d(32, 16, 1), nn.InstanceNorm2d(16, affine=True), nn.PReLU(16)
        self.gconv, self.up = nn.Conv2d(16, 16, 3, groups=2), nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.conv3, self.lin, self.fc = nn.Conv2d(22, 12, 1), nn.Linear(12, 12), nn.Linear(12 * 4, 10)

    def forward(self, x):
        a, b = self.conv1(x).split([6, 10], dim=1)
        x = self.conv2(torch.relu(self.dw(torch.cat([b, a], 1))))
        x = self.prelu(self.inorm(x))
        c = F.max_pool2d(F.interpolate(self.gconv(F.pad(x, (1, 1, 1, 1))), scale_factor=2.0), 2)
        d = F.max_pool2d(torch.sigmoid(self.up(x)), 2)
        z = F.softmax(self.conv3(torch.cat([d[:, 2:8], c], 1)), dim=-1)
        t = self.lin(z.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(-1, 12, 8, 8)
        # 1x1 -> 2x2 by an adaptive pool: the dynamo exporter replicates pixels with GatherND
        pooled = F.adaptive_avg_pool2d(F.avg_pool2d(t, 8), 2) if self.replicate else F.avg_pool2d(t, 4)
        return self.fc(torch.flatten(pooled, 1))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript", "torchscript-opset11"])
def test_every_handled_op_compacts_exactly(exporter, tmp_path):
    model, x = randomize_for_check(OpsNet(replicate=exporter == "dynamo")).eval(), torch.randn(2, 3, 8, 8)
    path = tmp_path / "ops.onnx"
    if exporter == "torchscript-opset11":  # Split sizes as an attribute, Resize and Slice of opset 11
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=11, input_names=["input"])
    else:
        export_onnx(model, x, path, exporter)
    graph = build_onnx_channel_graph(path)
    assert ("GatherND" in {n.op_type for n in graph.gm.graph.node}) == (exporter == "dynamo")
    frozen = [g.name for g in graph.groups if not g.prunable]
    assert len(graph.groups) == 8 and frozen == ["fc"]
    mask = uniform_channel_mask(graph, random_scores(graph, seed=1), ratio=0.5)
    assert len(mask.pruned_groups()) == 7
    compacted = compact_onnx(graph, mask)
    feeds = random_feeds(graph.gm, seed=1)
    reference = _run(masked_onnx(graph, mask), feeds, tmp_path / "masked.onnx")
    assert max_rel_diff(_run(compacted, feeds, tmp_path / "compacted.onnx"), reference) <= 1e-4
    assert max_rel_diff(reference, run_model(path, feeds)) > 1e-2
    conv1 = next(g for g in graph.groups if g.name == "conv1")
    dw = next(n for n in compacted.graph.node if n.op_type == "Conv" and n.input[1] == "dw.weight")
    assert attr(dw, "group") == conv1.size - mask.removed(conv1.id)  # depthwise follows its input


class ChannelsLastNorm(nn.Module):
    """conv -> LayerNorm over the channels (channels last) -> conv: ONNX LayerNormalization on the group."""

    def __init__(self):
        super().__init__()
        self.c1, self.ln, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm(8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c2(self.ln(self.c1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_layer_normalization_compacts_exactly_zero_padded(exporter, tmp_path):
    """The compacted LayerNormalization reads its input padded back to the original width with zeros (the
    masked model's input) and its output is sliced to the kept channels. Negative control: the norm over the
    kept channels alone (no padding, scale and bias cut to them) differs from the masked model."""
    model, x = randomize_for_check(ChannelsLastNorm()).eval(), torch.randn(2, 3, 6, 6)
    path = tmp_path / "ln.onnx"
    export_onnx(model, x, path, exporter)
    graph = build_onnx_channel_graph(path)
    group = next(g for g in graph.groups if g.name == "c1")
    assert group.prunable and group.exact
    keep = np.array([True, False, True, True, False, True, False, True])
    mask = ChannelMask({group.id: keep}, graph.model_name, graph.fingerprint())
    compacted = compact_onnx(graph, mask)
    ops = [n.op_type for n in compacted.graph.node]
    at = ops.index("LayerNormalization")
    assert ops[at - 1 : at + 2] == ["Pad", "LayerNormalization", "Slice"]
    feeds = random_feeds(graph.gm, seed=1)
    reference = _run(masked_onnx(graph, mask), feeds, tmp_path / "masked.onnx")
    assert max_rel_diff(_run(compacted, feeds, tmp_path / "compacted.onnx"), reference) <= 1e-4
    norm = compacted.graph.node[at]
    inits = {t.name: t for t in compacted.graph.initializer}
    for i in (1, 2):  # the negative control: the standard norm over the kept channels
        cut = numpy_helper.to_array(inits[norm.input[i]])[: keep.sum()]
        inits[norm.input[i]].CopyFrom(numpy_helper.from_array(cut, norm.input[i]))
    norm.input[0] = compacted.graph.node[at - 1].input[0]
    compacted.graph.node[at + 1].input[0] = norm.output[0] = "plain_norm"
    assert max_rel_diff(_run(compacted, feeds, tmp_path / "plain.onnx"), reference) > 1e-3


# ----------------------------------------------------------------------------- fail closed


class CumSumNet(nn.Module):
    """conv1 -> relu -> cumsum over channels (no ONNX handler) -> conv2 -> relu -> conv3 -> mean -> fc."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.conv3, self.fc = nn.Conv2d(16, 8, 1), nn.Linear(8, 10)

    def forward(self, x):
        x = torch.cumsum(torch.relu(self.conv1(x)), dim=1)
        x = torch.relu(self.conv3(torch.relu(self.conv2(x))))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def cumsum_onnx(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "cumsum.onnx"
    export_onnx(CumSumNet().eval(), torch.randn(1, 3, 8, 8), path, "torchscript")
    return path


def _by_producer(graph):
    return {g.producers[0].tensor.rsplit(".", 1)[0]: g for g in graph.groups}


def test_unhandled_op_freezes_the_channels_reaching_it(cumsum_onnx, tmp_path):
    graph = build_onnx_channel_graph(cumsum_onnx)
    groups = _by_producer(graph)
    cumsum = next(n.name for n in graph.gm.graph.node if n.op_type == "CumSum")
    assert not groups["conv1"].prunable
    assert groups["conv1"].reason == f"no handler for ONNX op CumSum (node {cumsum})"
    assert groups["conv2"].prunable and groups["conv3"].prunable
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), ratio=0.5)
    assert sorted(mask.pruned_groups()) == sorted([groups["conv2"].id, groups["conv3"].id])
    report = prune_onnx_file(cumsum_onnx, mask, tmp_path / "small.onnx")
    assert report.max_rel_diff <= 1e-4 and report.params_after < report.params_before
    small = onnx.load(str(tmp_path / "small.onnx"))
    dims = {t.name: tuple(t.dims) for t in small.graph.initializer}
    assert (
        dims["conv2.weight"] == (8, 8, 3, 3) and dims["conv3.weight"] == (4, 8, 1, 1) and dims["fc.weight"] == (10, 4)
    )


def test_custom_domain_op_fails_closed_without_onnxruntime(cumsum_onnx, tmp_path):
    """A custom op onnxruntime cannot run: shapes come from shape inference, the op freezes its inputs."""
    model = onnx.load(str(cumsum_onnx))
    node = next(n for n in model.graph.node if n.op_type == "CumSum")
    node.op_type, node.domain = "MyOp", "com.example"
    del node.input[1:]
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    graph = build_onnx_channel_graph(model)  # no output shape declared: everything after it is unknown
    assert not any(g.prunable for g in graph.groups)
    assert any("onnxruntime cannot run the model" in g.reason for g in graph.groups)
    model.graph.value_info.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, [1, 8, 8, 8]))
    graph = build_onnx_channel_graph(model)
    groups = _by_producer(graph)
    assert groups["conv1"].reason == f"no handler for ONNX op com.example::MyOp (node {node.name})"
    assert groups["conv2"].prunable and groups["conv3"].prunable
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), ratio=0.5)
    compacted = {t.name: tuple(t.dims) for t in compact_onnx(graph, mask).graph.initializer}
    assert compacted["conv2.weight"] == (8, 8, 3, 3)  # compacts, but cannot be verified:
    with pytest.raises(VerificationError, match="onnxruntime cannot run .* nothing was written"):
        prune_onnx_file(model, mask, tmp_path / "small.onnx", graph=graph)
    assert list(tmp_path.iterdir()) == [cumsum_onnx]


def test_an_initializer_an_unknown_op_reads_keeps_its_shape():
    """conv2's weight is also read by CumSum: conv1's channels (its input columns) are frozen."""
    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((8, 3, 3, 3), dtype=np.float32), rng.standard_normal((4, 8, 1, 1), dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], name="relu"),
        helper.make_node("Conv", ["b", "w2"], ["y"], name="conv2"),
        helper.make_node("CumSum", ["w2", "axis"], ["peek"], name="peek"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    inits.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "axis"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "peek")],
        inits,
    )
    mapped = build_onnx_channel_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    (conv1,) = [g for g in mapped.groups if g.producers[0].tensor == "w1"]
    assert not conv1.prunable and conv1.reason.startswith("w2 is also read where no handler for ONNX op CumSum")


def test_dynamic_batch_freezes_computed_shapes_unless_an_input_shape_is_given(tmp_path):
    model, x = zoo_case("torchvision:shufflenet_v2_x1_0", 32)
    path = tmp_path / "dyn.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, input_names=["input"], opset_version=17,
            dynamic_axes={"input": {0: "batch"}},
        )  # fmt: skip
    dynamic = build_onnx_channel_graph(path)
    frozen = [g.reason for g in dynamic.groups if not g.prunable]
    assert any("to a computed shape" in r for r in frozen) and len(dynamic.prunable_groups) >= 10
    mask = uniform_channel_mask(dynamic, random_scores(dynamic, seed=1), ratio=0.4)
    compacted, masked = compact_onnx(dynamic, mask), masked_onnx(dynamic, mask)
    for batch in (1, 3):  # the compacted file keeps its dynamic batch
        feeds = {"input": np.random.default_rng(batch).standard_normal((batch, 3, 32, 32), dtype=np.float32)}
        reference = _run(masked, feeds, tmp_path / "masked.onnx")
        assert max_rel_diff(_run(compacted, feeds, tmp_path / "compacted.onnx"), reference) <= 1e-4
    static = build_onnx_channel_graph(path, input_shape=(2, 3, 32, 32))
    assert len(static.prunable_groups) == len(static.groups) - 1  # all but the classifier


# ----------------------------------------------------------------------------- errors, files


def test_one_line_errors_for_files_that_are_not_onnx_models(tmp_path):
    with pytest.raises(HwpruneError, match=r"ONNX file .*missing.onnx does not exist"):
        build_onnx_channel_graph(tmp_path / "missing.onnx")
    with pytest.raises(HwpruneError, match="is a directory"):
        build_onnx_channel_graph(tmp_path)
    text = tmp_path / "notes.onnx"
    text.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01")
    with pytest.raises(HwpruneError, match="is not an ONNX model"):
        build_onnx_channel_graph(text)


def _two_input_model(dims):
    """y = (a + b) @ w: two inputs, one weight."""
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("a", "b")]
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "w"], ["y"])]
    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph(nodes, "two", inputs, [helper.make_tensor_value_info("y", 1, None)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def test_input_shapes_that_cannot_be_determined_are_refused():
    with pytest.raises(HwpruneError, match=r"ONNX input a has dynamic dimensions \[\?, 4\]: the input shape cannot"):
        build_onnx_channel_graph(_two_input_model(["n", 4]))
    with pytest.raises(HwpruneError, match="input_shape applies to a model with one input; this one has 2"):
        build_onnx_channel_graph(_two_input_model([2, 4]), input_shape=(2, 4))
    assert [g.size for g in build_onnx_channel_graph(_two_input_model([2, 4])).groups] == [3]


def test_prune_onnx_file_writes_nothing_unless_verified(exported, tmp_path):
    _, _, path = exported("hwprune:resnet20", None, "dynamo")
    graph = build_onnx_channel_graph(path)
    mask = uniform_channel_mask(graph, random_scores(graph, seed=2), ratio=0.5)
    dst = tmp_path / "out" / "small.onnx"
    dst.parent.mkdir()
    with pytest.raises(VerificationError, match="nothing was written"):
        prune_onnx_file(path, mask, dst, tolerance=-1.0, graph=graph)
    foreign = ChannelMask({0: np.ones(3, dtype=bool)}, "other", "0123456789abcdef")
    with pytest.raises(MaskMismatchError):
        prune_onnx_file(path, foreign, dst)
    assert list(dst.parent.iterdir()) == []
    report = prune_onnx_file(path, mask, dst, graph=graph)
    assert report.max_rel_diff <= 1e-4 and report.params_after < 0.5 * report.params_before
    assert list(dst.parent.iterdir()) == [dst]
    onnx.checker.check_model(str(dst))


# ----------------------------------------------------------------------------- CLI


def test_cli_maps_masks_and_exports_an_onnx_file(exported, tmp_path, capsys):
    _, _, path = exported("hwprune:resnet20", None, "dynamo")
    assert main(["map", "--onnx", str(path), "--json", str(tmp_path / "groups.json")]) == 0
    out = capsys.readouterr().out
    assert "13 channel groups, 12 prunable" in out and "layer1.0.conv1" in out
    assert len(json.loads((tmp_path / "groups.json").read_text())) == 13
    mask_path, small = tmp_path / "mask.json", tmp_path / "small.onnx"
    assert main(["mask", "--onnx", str(path), "--out", str(mask_path), "--method", "l2", "--ratio", "0.5"]) == 0
    mask = ChannelMask.load(mask_path)
    assert mask.fingerprint == build_onnx_channel_graph(path).fingerprint() and len(mask.pruned_groups()) == 12
    assert mask.meta["method"] == "l2"
    assert main(["export", "--onnx", str(path), "--mask", str(mask_path), "--out", str(small)]) == 0
    assert "Compacted vs masked model in onnxruntime" in capsys.readouterr().out
    assert small.stat().st_size < 0.4 * path.stat().st_size
    assert main(["map", "--onnx", str(path), "--input-shape", "2,3,32,32"]) == 0  # the file's own shape
    assert "13 channel groups, 12 prunable" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["map", "--onnx", "m.onnx", "--model", "resnet20"], "give --model or --onnx, not both"),
        (["mask", "--onnx", "m.onnx", "--out", "k.json", "--method", "taylor"], "needs a PyTorch model"),
        (["export", "--onnx", "m.onnx", "--out", "s.onnx", "--results", "r.csv"], "--results needs --model"),
        (["map", "--onnx", "missing.onnx"], "missing.onnx does not exist"),
        (["map"], "needs --model (or --onnx)"),
        (["map", "--onnx", "m.onnx", "--input-size", "64"], "with --onnx give --input-shape"),
        (["map", "--onnx", "m.onnx", "--input-shape", "1,x"], "is not a comma-separated list"),
        (["map", "--onnx", "m.onnx", "--input-shape", "1,3,64,64"], "does not fit"),
    ],
)
def test_cli_onnx_errors(argv, message, exported, tmp_path, monkeypatch, capsys):
    _, _, path = exported("hwprune:lenet5", None, "torchscript")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(path.read_bytes())
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------- space <-> depth, tiling


def _space_depth_model(mode: str) -> onnx.ModelProto:
    """conv1 (16) -> DepthToSpace(2, mode) -> conv2 (8) -> SpaceToDepth(2) -> conv3 (5)."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (16, 3, 1, 1), "b1": (16,), "w2": (8, 4, 3, 3), "w3": (5, 32, 1, 1)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n) for n, s in shapes.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1"),
        helper.make_node("DepthToSpace", ["a"], ["b"], name="d2s", blocksize=2, mode=mode),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("SpaceToDepth", ["c"], ["d"], name="s2d", blocksize=2),
        helper.make_node("Conv", ["d", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "space_depth",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_and_back_compact_exactly(mode, tmp_path):
    graph = build_onnx_channel_graph(_space_depth_model(mode))
    shuffled, unshuffled = (_by_producer(graph)[w] for w in ("w1", "w2"))
    assert shuffled.prunable and shuffled.size == 4  # 16 conv outputs, 4 per output channel
    assert unshuffled.prunable and unshuffled.size == 8  # each feeds 4 columns of conv3
    mask = uniform_channel_mask(graph, random_scores(graph, seed=1), ratio=0.5)
    assert set(mask.pruned_groups()) == {shuffled.id, unshuffled.id}
    feeds = random_feeds(graph.gm, seed=1)
    reference = _run(masked_onnx(graph, mask), feeds, tmp_path / "masked.onnx")
    compacted = compact_onnx(graph, mask)
    assert max_rel_diff(_run(compacted, feeds, tmp_path / "compacted.onnx"), reference) <= 1e-4
    kept = {t.name: tuple(t.dims) for t in compacted.graph.initializer}
    assert kept["w1"][0] == 4 * kept["w2"][1] == 8 and kept["w3"][1] == 4 * kept["w2"][0] == 16


def test_pixel_shuffle_tile_and_stack_exported_by_dynamo_compact_exactly(tmp_path):
    from tests.test_mapper_rules import ShuffleNet, StackRepeat

    for net, shape in ((ShuffleNet(), (2, 3, 8, 8)), (StackRepeat(), (2, 3, 6, 6))):
        model, x = randomize_for_check(net).eval(), torch.randn(*shape)
        path = tmp_path / f"{type(net).__name__}.onnx"
        export_onnx(model, x, path, "dynamo")
        graph = build_onnx_channel_graph(path)
        ops = {n.op_type for n in graph.gm.graph.node}
        assert {"DepthToSpace"} <= ops if isinstance(net, ShuffleNet) else {"Tile", "Concat"} <= ops
        assert sum(g.prunable for g in graph.groups) == 2 if isinstance(net, ShuffleNet) else 1
        mask = uniform_channel_mask(graph, random_scores(graph, seed=1), ratio=0.5)
        feeds = random_feeds(graph.gm, seed=1)
        reference = _run(masked_onnx(graph, mask), feeds, tmp_path / "masked.onnx")
        assert max_rel_diff(_run(compact_onnx(graph, mask), feeds, tmp_path / "compacted.onnx"), reference) <= 1e-4
