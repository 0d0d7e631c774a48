"""The ONNX front-end over the whole zoo: each model exported from PyTorch maps to the groups the fx
front-end finds, and a random 40 % mask compacts the ONNX file to one equal to the masked ONNX in
onnxruntime. (The TorchScript exporter here, for speed; the dynamo exporter's files are mapped in
tests/test_onnx_mapper.py and by benchmarks/mapper.py.)"""

import onnx
import pytest
from onnx import numpy_helper

from hwprune.export.onnx_compact import prune_onnx_file
from hwprune.export.onnx_export import export_onnx
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.crosscheck import match_groups, onnx_groups_of
from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph
from hwprune.models.zoo import SLOW, UNTRACEABLE, ci_zoo_cases, zoo_case
from hwprune.prune.channel import random_scores, uniform_channel_mask

# fx maps nn.MultiheadAttention and Swin's window attention as one op (compaction swaps in a call
# with free head widths), so query/key and value dimensions are separate groups there; the ONNX
# export reshapes the fused qkv projection into [3, heads, dim] and must keep it rectangular, so
# each query/key/value triple is one group: coarser, never finer
FUSED_QKV = ("torchvision:vit_", "torchvision:swin")
# fx freezes timm Swin's residual stream where the shifted-window mask is added (a broadcast it
# does not follow); the ONNX export computes that mask into a constant and the stream maps
COVERAGE_DIFFERS = {"timm:swin_tiny_patch4_window7_224"}


# over 250M parameters: their dense ONNX file (one file, no external data) and the onnxruntime run
# that exposes every intermediate take ~12 GB, too much beside a second test worker on 24 GB;
# benchmarks/mapper.py maps them one at a time
TOO_LARGE = {"torchvision:vit_h_14", "torchvision:vit_l_16", "torchvision:vit_l_32", "torchvision:regnet_y_128gf"}


# the TorchScript exporter writes these models' head reshapes with shapes computed at run time,
# which the ONNX front-end freezes (fail closed); the dynamo exporter writes constant shapes
DYNAMO_EXPORT = {"timm:vit_tiny_patch16_224", "timm:deit_tiny_patch16_224", "timm:swin_tiny_patch4_window7_224"}


def _param(qualified, size):
    marks = [pytest.mark.onnx] + ([pytest.mark.slow] if qualified in SLOW else [])
    return pytest.param(qualified, size, id=qualified, marks=marks)


@pytest.mark.parametrize(("qualified", "size"), [_param(*c) for c in ci_zoo_cases() if c[0] not in TOO_LARGE])
def test_onnx_front_end_matches_fx_and_compacts_exactly(qualified, size, tmp_path):
    model, x = zoo_case(qualified, size)
    dense = tmp_path / "dense.onnx"
    export_onnx(model, x, dense, exporter="dynamo" if qualified in DYNAMO_EXPORT else "torchscript")
    graph = build_onnx_channel_graph(dense, qualified)
    assert graph.prunable_groups and graph.prunable_macs_share() >= 0.5
    for g in graph.groups:
        assert g.prunable or g.reason, f"group {g.id} frozen without a reason"

    if qualified not in UNTRACEABLE:
        fx_graph = build_channel_graph(model, x, qualified)
        match = match_groups(fx_graph, graph)
        assert match.pairs
        if qualified.startswith(FUSED_QKV):
            _assert_onnx_only_coarser(match, fx_graph, graph)
        elif qualified in COVERAGE_DIFFERS:  # still, no fx group is split by the ONNX front-end
            assert all(len(ids) == 1 for ids in onnx_groups_of(fx_graph, graph, match.resolved).values())
        else:
            assert match.ok, "\n".join(match.differences[:5])

    mask = uniform_channel_mask(graph, random_scores(graph, seed=1), 0.4)
    assert mask.pruned_groups()
    report = prune_onnx_file(dense, mask, tmp_path / "pruned.onnx", graph=graph)
    assert report.max_rel_diff is not None and report.max_rel_diff <= 1e-4
    assert report.params_after < report.params_before
    before = {t.name: t.dims for t in onnx.load(dense).graph.initializer}
    after = {t.name: numpy_helper.to_array(t).shape for t in onnx.load(tmp_path / "pruned.onnx").graph.initializer}
    for gid in mask.pruned_groups():  # every producer axis really lost the removed channels
        for sl in graph.groups[gid].producers:
            assert after[sl.tensor][sl.axis] < before[sl.tensor][sl.axis]


def _assert_onnx_only_coarser(match, fx_graph, onnx_graph):
    """No fx group is split by the ONNX front-end, and some ONNX group joins several fx groups."""
    landed = onnx_groups_of(fx_graph, onnx_graph, match.resolved)
    assert landed and all(len(onnx_ids) == 1 for onnx_ids in landed.values()), landed
    assert len({next(iter(ids)) for ids in landed.values()}) < len(landed)  # the case the exception is for
