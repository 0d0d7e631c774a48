"""The torch.export front-end: the same groups as fx on the zoo, exact compaction of the user's own
module, the programs symbolic tracing cannot capture, and failing closed on ops it does not know."""

import numpy as np
import pytest
import torch
from torch import fx, nn

from hwprune.errors import EquivalenceError, HwpruneError
from hwprune.export.compact import compact_model, masked_model
from hwprune.export.pipeline import export_pruned
from hwprune.export.verify import max_rel_diff, randomize_for_check
from hwprune.graph_mapper import build_channel_graph
from hwprune.models.zoo import zoo_case
from hwprune.prune.channel import random_scores, uniform_channel_mask

# one of each structure: residual, inverted residual + depthwise, concat, squeeze-excite, LayerNorm + layer
# scale, plain
PARITY = [
    "torchvision:resnet18",
    "torchvision:mobilenet_v2",
    "torchvision:densenet121",
    "torchvision:efficientnet_b0",
    "torchvision:convnext_tiny",
    "torchvision:vgg11_bn",
]


def groups_by_slices(graph):
    """Each group as the set of its (tensor, axis, positions) slices, with its size and state."""
    return {
        frozenset((s.tensor, s.axis, s.index, s.inner) for s in g.slices): (g.size, g.prunable, g.exact)
        for g in graph.groups
    }


@pytest.mark.parametrize("qualified", PARITY)
def test_export_maps_the_groups_fx_maps(qualified):
    model, x = zoo_case(qualified, 32)
    by_fx = build_channel_graph(model, x, qualified, front_end="fx")
    by_export = build_channel_graph(model, x, qualified, front_end="export")
    assert isinstance(by_fx.gm, fx.GraphModule) and by_export.gm is model
    assert len(by_export.prunable_groups) == len(by_fx.prunable_groups) > 0
    fx_groups, export_groups = groups_by_slices(by_fx), groups_by_slices(by_export)
    assert fx_groups.keys() == export_groups.keys()
    assert {k: v[:2] for k, v in export_groups.items()} == {k: v[:2] for k, v in fx_groups.items()}
    # fx rewrites a LayerNorm subclass's F.layer_norm call into the zero-padded norm (exact); the export
    # front-end compacts the user's own module, whose code it cannot rewrite: those groups stay inexact there
    less_exact = [k for k in fx_groups if fx_groups[k][2] and not export_groups[k][2]]
    assert not [k for k in fx_groups if export_groups[k][2] and not fx_groups[k][2]]
    if qualified == "torchvision:convnext_tiny":  # LayerNorm2d in its stem and downsampling layers
        assert less_exact
        assert all("layer_norm" in g.inexact_reason for g in by_export.groups if g.prunable and not g.exact)
    else:
        assert not less_exact
        assert by_export.prunable_macs_share() == pytest.approx(by_fx.prunable_macs_share())


def test_a_chunk_in_the_code_keeps_equal_halves_or_freezes():
    """ShuffleNet's ``x.chunk(2, dim=1)`` cannot be rewritten in the user's code: each half must keep as
    many channels, so groups whose channels meet in one chunk from both halves freeze (fx rewrites the
    chunk into a split with the kept sizes and prunes them)."""
    model, x = zoo_case("torchvision:shufflenet_v2_x0_5", 32)
    by_fx = build_channel_graph(model, x, front_end="fx")
    by_export = build_channel_graph(model, x, front_end="export")
    fx_groups, export_groups = groups_by_slices(by_fx), groups_by_slices(by_export)
    assert fx_groups.keys() == export_groups.keys()
    lost = [k for k in fx_groups if fx_groups[k][1] and not export_groups[k][1]]
    assert not [k for k in fx_groups if export_groups[k][1] and not fx_groups[k][1]]
    assert 0 < len(lost) < len(by_fx.prunable_groups)
    reasons = {g.reason for g in by_export.groups if not g.prunable and g.size > 10}
    assert any(r.startswith("chunk ") for r in reasons)


@pytest.mark.parametrize(
    "qualified", ["torchvision:resnet18", "torchvision:mobilenet_v2", "torchvision:shufflenet_v2_x0_5"]
)
def test_export_compacts_the_users_module_exactly(qualified, tmp_path):
    model, x = zoo_case(qualified, 32)  # random weights and BatchNorm statistics: every channel matters
    graph = build_channel_graph(model, x, qualified, front_end="export")
    mask = uniform_channel_mask(graph, random_scores(graph, seed=3), ratio=0.4)
    compacted, report = export_pruned(model, graph, mask, x, tmp_path / "model.onnx")
    assert type(compacted) is type(model)  # the user's class, layers resized, still trainable
    assert report.max_rel_diff <= 1e-4 and report.onnx_max_rel_diff <= 1e-4
    assert report.params_after < 0.8 * report.params_before
    with torch.no_grad():
        assert max_rel_diff(compacted(x), model(x)) > 1e-2  # pruning changed the function: the check had work
    compacted.train()
    compacted(x).sum().backward()
    assert all(p.grad is not None for p in compacted.parameters() if p.requires_grad)


class ShapeBranch(nn.Module):
    """Python control flow on a shape and a parameter's dtype read in forward: symbolic tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x.to(self.stem[0].weight.dtype))
        if x.shape[-1] > 8:  # a data-independent branch fx cannot evaluate on a proxy
            x = self.pool(x)
        x = self.body(x)
        return self.head(x.mean((2, 3)))


class DictOutput(nn.Module):
    """A segmentation-style head returning a dict: every value is an output, its channels stay."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.out = nn.Conv2d(32, 5, 1)
        self.aux = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        f = self.backbone(x)
        return {"out": self.out(self.mid(f)), "aux": self.aux(f), "features": f}


def _informative(model: nn.Module) -> nn.Module:
    return randomize_for_check(model, seed=0).eval()


def test_auto_falls_back_to_export_when_fx_cannot_trace():
    model, x = _informative(ShapeBranch()), torch.randn(2, 3, 16, 16)
    with pytest.raises(HwpruneError, match=r"^torch\.fx cannot trace ShapeBranch"):
        build_channel_graph(model, x, front_end="fx")
    graph = build_channel_graph(model, x)  # auto
    assert graph.gm is model
    sizes = sorted(g.size for g in graph.prunable_groups)
    assert sizes == [16, 24]  # stem and body channels; the dtype read made no group of its own
    assert {s.tensor for s in graph.sites} <= set(dict(model.named_parameters()) | dict(model.named_buffers()))
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), ratio=0.5)
    small = compact_model(graph, mask).eval()
    with torch.no_grad():
        assert max_rel_diff(small(x), masked_model(model, graph, mask).eval()(x)) <= 1e-5
    assert small.body[0].weight.shape == (12, 8, 3, 3) and small.head.in_features == 12


@pytest.mark.parametrize("front_end", ["fx", "export"])
def test_dict_outputs_keep_every_output_channel(front_end):
    model, x = _informative(DictOutput()), torch.randn(2, 3, 8, 8)
    graph = build_channel_graph(model, x, front_end=front_end)
    prunable = graph.prunable_groups
    assert [g.size for g in prunable] == [32]  # only the channels inside the head
    frozen = {g.size: g.reason for g in graph.groups if not g.prunable}
    assert "reaches the model output" in frozen[16] and "reaches the model output" in frozen[5]


class Cumulative(nn.Module):
    """An op with no handler along the channels (cumsum): its channels must freeze, naming it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.b(torch.cumsum(self.a(x), dim=1)).relu())


def test_an_unknown_aten_op_freezes_its_channels_with_its_name():
    graph = build_channel_graph(Cumulative(), torch.randn(1, 3, 8, 8), front_end="export")
    frozen = [g for g in graph.groups if not g.prunable]
    assert any("aten.cumsum" in g.reason for g in frozen)
    assert [g.size for g in graph.prunable_groups] == [8]  # b's outputs: after the cumsum, before c


class BakedSize(nn.Module):
    """A size written into the code: the export front-end cannot rewrite it; the check must catch it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.conv(x).relu().view(-1, 16 * 4 * 4))


def test_a_size_baked_into_the_code_is_caught_not_shipped(tmp_path):
    model, x = _informative(BakedSize()), torch.randn(2, 3, 4, 4)
    graph = build_channel_graph(model, x, front_end="export")
    mask = uniform_channel_mask(graph, random_scores(graph, seed=0), ratio=0.5)
    assert mask.pruned_groups()
    with pytest.raises(EquivalenceError, match="computes a size from a fixed number") as err:
        export_pruned(model, graph, mask, x, tmp_path / "model.onnx")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "model.onnx").exists()
    # the fx front-end rewrites the literal, so the same model compacts there
    by_fx = build_channel_graph(model, x, front_end="fx")
    compacted, report = export_pruned(model, by_fx, uniform_channel_mask(by_fx, random_scores(by_fx, seed=0), 0.5), x,
                                      tmp_path / "fx.onnx")  # fmt: skip
    assert report.max_rel_diff <= 1e-5


def test_untraceable_by_both_is_one_line():
    class DataDependent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.conv(x)
            return y[y > 0].sum() if y.sum() > 0 else y.mean()  # a branch on data

    with pytest.raises(HwpruneError) as err:
        build_channel_graph(DataDependent(), torch.randn(1, 3, 4, 4))
    text = str(err.value)
    assert text.startswith("torch.fx cannot trace DataDependent") and "torch.export cannot capture" in text
    assert "\n" not in text


def test_unknown_front_end_is_refused():
    with pytest.raises(HwpruneError, match="unknown front-end 'jit': use one of auto, fx, export"):
        build_channel_graph(nn.Linear(2, 2), torch.randn(1, 2), front_end="jit")


def test_export_mapping_leaves_the_model_as_it_was():
    model = ShapeBranch().train()
    model.body.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    build_channel_graph(model, torch.randn(2, 3, 16, 16), front_end="export")
    assert model.training and not model.body.training and model.stem.training
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), before[k].numpy(), err_msg=k)


# ----------------------------------------------------------------------------- choosing the front-end


def test_the_front_end_is_chosen_through_the_api_and_the_cli(capsys):
    """``front_end=`` / ``--front-end``: fx maps a GraphModule, export the user's own module, the same groups."""
    import hwprune
    from hwprune.cli import main

    model, x = zoo_case("torchvision:resnet18", 32)
    by_fx, by_export = hwprune.map(model, x, front_end="fx"), hwprune.map(model, x, front_end="export")
    assert isinstance(by_fx.gm, fx.GraphModule) and by_export.gm is model
    assert groups_by_slices(by_fx) == groups_by_slices(by_export)
    with pytest.raises(HwpruneError, match="unknown front-end 'jit'"):
        hwprune.map(model, x, front_end="jit")
    summaries = []
    for front_end in ("fx", "export"):
        assert main(["map", "--model", "resnet18", "--input-size", "32", "--front-end", front_end]) == 0
        summaries.append(capsys.readouterr().out.splitlines()[0].split(", built in")[0])
    assert summaries[0] == summaries[1] and "prunable" in summaries[0]


def test_the_front_end_option_is_refused_for_an_onnx_file(tmp_path):
    import hwprune
    from hwprune.export.onnx_export import export_onnx
    from tests.test_cli import assert_one_line_error, run_cli

    model, x = zoo_case("hwprune:lenet5", 28)
    path = tmp_path / "lenet.onnx"
    export_onnx(model, x, path)
    with pytest.raises(HwpruneError, match="front_end='fx' is for a PyTorch module"):
        hwprune.map(path, front_end="fx")
    assert_one_line_error(run_cli("map", "--onnx", path, "--front-end", "export"), "--front-end is for --model")
