"""Per-op timings as the latency model's signal; profile candidates cut from one export of the dense model."""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from hwprune.cli import main
from hwprune.errors import HwpruneError
from hwprune.export.compact import compact_model
from hwprune.export.onnx_compact import compact_onnx
from hwprune.export.onnx_export import export_onnx, run_onnx
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.cost import CostModel, kept_shares
from hwprune.latency.backends import BACKENDS
from hwprune.latency.exported_candidates import translation_for
from hwprune.latency.lut import LUT
from hwprune.latency.model import LatencyModel
from hwprune.latency.op_timing import attribute_ort_profile, ort_node_key
from hwprune.latency.profiler import profile_edges, profiled_groups, random_mask


class Block(nn.Module):
    """Conv-BN-ReLU, a depthwise conv, a residual add fused into a conv, a linear head: ORT's fusions."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 16, 1)
        self.expand = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(x + self.pw(torch.relu(self.dw(x))))
        return self.head(torch.relu(self.expand(x)).mean((2, 3)))


def informative(model):
    """Random BN statistics and affine terms, so a wrong channel shows in the output."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = informative(Block())
    x = torch.randn(1, 3, 12, 12)
    return model, x, build_channel_graph(model, x, "block")


@pytest.fixture(scope="module")
def chain():
    """Five convs and a head in a row: six ops whose costs five groups move independently."""
    torch.manual_seed(0)
    widths = [3, 16, 24, 32, 24, 16]
    layers = [m for a, b in zip(widths, widths[1:], strict=False) for m in (nn.Conv2d(a, b, 3, padding=1), nn.ReLU())]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()
    x = torch.randn(1, 3, 8, 8)
    return build_channel_graph(model, x, "chain")


def op_weights(graph):
    return {t for t, e in CostModel(graph).tensors.items() if e["macs"] > 0}


# ----------------------------------------------------------------------------- the model


def test_per_op_signal_recovers_a_known_per_op_cost_exactly(chain):
    """Each op costs its own fixed time plus its own time per MAC (not one per class): three masks with per-op
    timings give every op's cost, and any other mask is predicted exactly; whole-network ratios alone cannot."""
    graph = chain
    assert len(profiled_groups(graph)) == 5 and len(op_weights(graph)) == 6
    cm = CostModel(graph)
    ops = sorted(op_weights(graph))
    rng = np.random.default_rng(0)
    fixed_ms = dict(zip(ops, rng.uniform(0.01, 0.05, len(ops)), strict=True))
    per_mac = dict(zip(ops, rng.uniform(1e-6, 9e-6, len(ops)), strict=True))  # ms per MAC, every op its own

    def op_ms(shares):
        return {t: fixed_ms[t] + per_mac[t] * cm.tensors[t]["macs"] * cm.fraction(t, shares) for t in ops}

    def latency_of(shares):
        return 0.3 + sum(op_ms(shares).values())

    def lut(with_ops, shuffled=False):
        records = []
        masks = [{}] + [kept_shares(graph, random_mask(graph, rng)) for _ in range(3)]
        for i, shares in enumerate(masks):
            rec = {"index": i, "shares": {str(k): v for k, v in shares.items()}, "baseline_ms": latency_of({})}
            rec["latency_ms"] = latency_of(shares)
            if with_ops:
                times = op_ms(shares)
                rec["op_ms"] = dict(zip(ops, np.roll(list(times.values()), 1), strict=True)) if shuffled else times
            records.append(rec)
        return LUT({"model": "chain", "fingerprint": graph.fingerprint(), "backend": "ort-cpu"}, [], records)

    test_masks = [kept_shares(graph, random_mask(graph, np.random.default_rng(9))) for _ in range(20)]

    def worst_error(model):
        return max(abs(model.predict(s) / latency_of(s) - 1) for s in test_masks)

    per_op = LatencyModel(lut(True), graph)
    assert per_op.per_op and per_op.baseline_ms == pytest.approx(latency_of({}))
    for shares in test_masks:
        assert per_op.predict(shares) == pytest.approx(latency_of(shares), rel=1e-9)
    assert np.abs(per_op.loo_errors_pct).max() < 1e-6 and "per-op timings" in per_op.fit_summary()
    # negative controls: the same masks without op timings, and with each op's timings given to another op
    assert worst_error(LatencyModel(lut(False), graph)) > 1e-3
    assert worst_error(LatencyModel(lut(True, shuffled=True), graph)) > 1e-3


def test_time_outside_the_ops_is_learned_from_the_channels_they_write(chain):
    """Eager PyTorch runs norms and activations apart from the convs: their time (``rest_ms``) grows with the
    channels each op writes times its output size. Given it, predictions are exact again; the same LUT
    without ``rest_ms`` (negative control) misses, since that time does not scale like the convs' MACs."""
    graph = chain
    cm = CostModel(graph)
    ops = sorted(op_weights(graph))
    params = graph.parameters()
    out_size = {t: cm.tensors[t]["macs"] / np.prod(params[t].shape[1:]) for t in ops}
    rng = np.random.default_rng(3)
    per_mac = dict(zip(ops, rng.uniform(1e-6, 9e-6, len(ops)), strict=True))

    def op_ms(shares):
        return {t: 0.02 + per_mac[t] * cm.tensors[t]["macs"] * cm.fraction(t, shares) for t in ops}

    def rest_ms(shares):  # 2e-5 ms per output element written
        return 0.1 + 2e-5 * sum(out_size[t] * cm.axis_fraction(t, 0, shares) for t in ops)

    def latency_of(shares):
        return 0.3 + sum(op_ms(shares).values()) + rest_ms(shares)

    def lut(with_rest):
        masks = [{}] + [kept_shares(graph, random_mask(graph, rng)) for _ in range(4)]
        records = [
            {"index": i, "shares": {str(k): v for k, v in sh.items()}, "baseline_ms": latency_of({}),
             "latency_ms": latency_of(sh), "op_ms": op_ms(sh), **({"rest_ms": rest_ms(sh)} if with_rest else {})}
            for i, sh in enumerate(masks)
        ]  # fmt: skip
        return LUT({"fingerprint": graph.fingerprint()}, [], records)

    tests = [kept_shares(graph, random_mask(graph, np.random.default_rng(8))) for _ in range(20)]
    model = LatencyModel(lut(True), graph)
    assert model.activation and len(model.theta) == 2 * len(ops)
    for shares in tests:
        assert model.predict(shares) == pytest.approx(latency_of(shares), rel=1e-9)
    g = profiled_groups(graph)[1].id
    change = model.predict_change(tests[0], g, 0.5)
    assert change == pytest.approx(model.predict({**tests[0], g: 0.5}) - model.predict(tests[0]), abs=1e-12)
    without = LatencyModel(lut(False), graph)
    assert not without.activation
    assert max(abs(without.predict(s) / latency_of(s) - 1) for s in tests) > 1e-3


def test_op_that_no_record_timed_takes_its_class_slope(setup):
    _, _, graph = setup
    ops = sorted(op_weights(graph))
    rng = np.random.default_rng(1)
    records = []
    for i in range(4):
        shares = kept_shares(graph, random_mask(graph, rng)) if i else {}
        ms = {t: 1.0 for t in ops if t != "head.weight"}
        records.append({"index": i, "shares": {str(k): v for k, v in shares.items()}, "baseline_ms": 9.0,
                        "latency_ms": 9.0, "op_ms": ms})  # fmt: skip
    model = LatencyModel(LUT({"fingerprint": graph.fingerprint()}, [], records), graph)
    assert np.isfinite(model.theta).all()
    bad = LUT({"fingerprint": graph.fingerprint()}, [], [{**r, "op_ms": {"other.weight": 1.0}} for r in records])
    with pytest.raises(HwpruneError, match="name none of this model's ops"):
        LatencyModel(bad, graph)


# ----------------------------------------------------------------------------- attribution of ORT's profile


def _conv(name, x, w, out):
    return helper.make_node("Conv", [x, w], [out], name=name)


def test_ort_profile_attribution_follows_fusions_to_the_right_weight():
    """relu(add(conv_a(x), conv_b(x))): ORT runs conv_b alone and fuses add + relu into conv_a, naming the
    fused node after the relu's output; a pool reaches no weight and stays unattributed."""
    w = [helper.make_tensor(n, TensorProto.FLOAT, [4, 4, 1, 1], [0.0] * 16) for n in ("wa", "wb")]
    nodes = [
        _conv("node_conv_a", "x", "wa", "a"),
        _conv("node_conv_b", "x", "wb", "b"),
        helper.make_node("Add", ["a", "b"], ["s"], name="node_add"),
        helper.make_node("Relu", ["s"], ["r"], name="node_relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["y"], name="node_pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        w,
    )
    model = helper.make_model(graph)

    def event(name, ts, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        event("b_nchwc", 1, 10),  # conv_b by its output
        event("r_nchwc", 20, 30),  # conv_a + add + relu, named after the relu
        event("node_pool", 60, 5),
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 80},
        event("b_nchwc", 201, 12),
        event("r_nchwc", 220, 28),
        event("node_pool", 260, 4),
    ]
    per_run, durations, rest = attribute_ort_profile(events, model)
    assert per_run == [{"wb": 0.01, "wa": 0.03}, {"wb": 0.012, "wa": 0.028}]
    assert durations == [0.1, 0.08] and rest == [0.005, 0.004]
    assert [
        ort_node_key(n) for n in ("fused node_linear_kernel_time", "node_MatMul_1/MatMulAddFusion_kernel_time")
    ] == [
        "node_linear",
        "node_MatMul_1",
    ]


@pytest.mark.onnx
def test_ort_op_times_cover_every_weight_of_a_real_export(setup, tmp_path):
    model, x, graph = setup
    path = tmp_path / "block.onnx"
    export_onnx(compact_model(graph, random_mask(graph, np.random.default_rng(0))), x, path)
    ops = BACKENDS.get("ort-cpu").op_times(path, x, threads=1, runs=3)
    assert set(ops.per_weight_ms) == op_weights(graph)  # conv+bn+relu, depthwise, add-fused, Gemm: each once
    assert all(ms > 0 for ms in ops.per_weight_ms.values()) and ops.runs == 3
    assert sum(ops.per_weight_ms.values()) + ops.unattributed_ms <= ops.total_ms * 1.05


def test_torch_op_times_hook_every_weighted_module(setup):
    model, x, graph = setup
    ops = BACKENDS.get("torch-cpu").op_times(compact_model(graph, random_mask(graph, np.random.default_rng(0))), x)
    assert set(ops.per_weight_ms) == op_weights(graph) and all(ms > 0 for ms in ops.per_weight_ms.values())
    assert sum(ops.per_weight_ms.values()) <= ops.total_ms and ops.runs == 5


# ----------------------------------------------------------------------------- candidates from one export


@pytest.mark.onnx
def test_candidates_cut_from_the_dense_export_remove_the_same_channels(setup, tmp_path):
    """The translated mask, compacted in the dense file, computes what the compacted module computes."""
    model, x, graph = setup
    path = tmp_path / "dense.onnx"
    export_onnx(compact_model(graph, random_mask(graph, np.random.default_rng(5), min_keep=1.0)), x, path)
    translation = translation_for(graph, path, profiled_groups(graph))
    assert not isinstance(translation, str), translation
    for seed in range(3):
        mask = random_mask(graph, np.random.default_rng(seed), min_keep=0.3)
        expected = compact_model(graph, mask)(x).detach().numpy()
        onnx_mask = translation.onnx_mask(mask)
        [got] = run_onnx(compact_onnx(translation.onnx_graph, onnx_mask), x)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
        # negative control: the same number of channels, but other ones, computes something else
        gid = max(onnx_mask.keep, key=lambda g: (~onnx_mask.keep[g]).sum())
        onnx_mask.keep[gid] = onnx_mask.keep[gid][::-1].copy()
        [other] = run_onnx(compact_onnx(translation.onnx_graph, onnx_mask), x)
        assert np.abs(other - expected).max() > 1e-3


@pytest.mark.onnx
def test_translation_resolves_renamed_weights_by_value_and_refuses_unknown_ones(setup, tmp_path):
    """Exporters rename some weights (a Linear lowered to MatMul becomes ``val_N``): resolved by value, the same
    channels still go; a weight that matches nothing leaves its group without a counterpart (refused)."""
    model, x, graph = setup
    path = tmp_path / "dense.onnx"
    export_onnx(compact_model(graph, random_mask(graph, np.random.default_rng(5), min_keep=1.0)), x, path)
    renamed = onnx.load(path)  # the tensors of expand's output group under other names
    new = {
        i.name: f"val_{k}" for k, i in enumerate(renamed.graph.initializer) if i.name.startswith(("expand.", "head."))
    }
    for init in renamed.graph.initializer:
        init.name = new.get(init.name, init.name)
    for node in renamed.graph.node:
        node.input[:] = [new.get(i, i) for i in node.input]
    onnx.save(renamed, path)
    translation = translation_for(graph, path, profiled_groups(graph))
    mask = random_mask(graph, np.random.default_rng(1), min_keep=0.3)
    [got] = run_onnx(compact_onnx(translation.onnx_graph, translation.onnx_mask(mask)), x)
    np.testing.assert_allclose(got, compact_model(graph, mask)(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    for init in renamed.graph.initializer:  # now the renamed weights match no parameter either
        if init.name in new.values():
            values = onnx.numpy_helper.to_array(init)
            init.CopyFrom(onnx.numpy_helper.from_array(values + np.random.default_rng(0).normal(size=values.shape)
                                                       .astype(values.dtype), init.name))  # fmt: skip
    onnx.save(renamed, path)
    reason = translation_for(graph, path, profiled_groups(graph))
    assert isinstance(reason, str) and "has no counterpart" in reason


# ----------------------------------------------------------------------------- the profile, end to end


@pytest.mark.onnx
@pytest.mark.parametrize("backend", ["ort-cpu", "torch-cpu"])
def test_per_op_profile_records_every_op_for_every_mask(setup, tmp_path, backend):
    model, x, graph = setup
    lut = profile_edges(
        model, graph, x, backend, points=(), repeats=3, progress=False, calibration_masks=3, round_to=4, per_op=True
    )
    assert lut.points == [] and len(lut.calibration) == 4 and lut.calibration[0]["shares"] == {}  # dense first
    for record in lut.calibration:
        assert set(record["op_ms"]) == op_weights(graph) and all(v > 0 for v in record["op_ms"].values())
    lut.save(tmp_path / "lut.json")
    loaded = LUT.load(tmp_path / "lut.json")
    assert loaded.calibration == lut.calibration and loaded.meta["per_op"] is True
    fitted = LatencyModel(loaded, graph)
    assert fitted.per_op and np.isfinite(fitted.theta).all() and fitted.loo_errors_pct.size == 4


def test_per_op_refused_where_the_backend_cannot_time_ops(setup, monkeypatch):
    model, x, graph = setup
    monkeypatch.setattr(BACKENDS, "_items", dict(BACKENDS._items))

    class NoOps(type(BACKENDS.get("torch-cpu"))):
        name = "no-ops-test"
        reports_op_times = False

    BACKENDS.add(NoOps.name, NoOps())
    with pytest.raises(HwpruneError, match="cannot report per-op timings"):
        profile_edges(model, graph, x, NoOps.name, points=(), per_op=True, progress=False)
    with pytest.raises(HwpruneError, match="--calibration-masks 2 or more"):
        profile_edges(model, graph, x, "torch-cpu", points=(), per_op=True, calibration_masks=1, progress=False)


@pytest.mark.onnx
def test_cli_per_op_profile_then_validate(tmp_path, capsys):
    lut = tmp_path / "lut.json"
    base = ["--model", "lenet5", "--threads", "1", "--repeats", "3"]
    assert (
        main(["profile-edges", *base, "--per-op", "--calibration-masks", "3", "--round-to", "2", "--out", str(lut)])
        == 0
    )
    out = capsys.readouterr().out
    assert "(per-op timings)" in out and "4 calibration masks" in out
    data = json.loads(lut.read_text())
    assert data["points"] == [] and all("op_ms" in c for c in data["calibration"])
    assert main(["latency", "validate", *base, "--lut", str(lut), "--masks", "2"]) == 0
    assert "latency model on 2 random masks" in capsys.readouterr().out
    assert (
        main(["profile-edges", *base, "--per-op", "--calibration-masks", "1", "--out", str(tmp_path / "x.json")]) == 2
    )
    assert "--calibration-masks 2 or more" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


# ----------------------------------------------------------------------------- kernel tables (jagged backends)


def test_kernel_table_sweeps_each_shrinking_axis_on_the_grid(setup):
    from hwprune.latency.kernel_table import axis_counts, measure_kernel_table

    model, x, graph = setup
    dense = compact_model(graph, random_mask(graph, np.random.default_rng(0), min_keep=1.0))
    table = measure_kernel_table(graph, dense, x, step=4, repeats=2, progress=False)
    assert set(table) == op_weights(graph)
    assert [e["axis"] for e in table["stem.weight"]] == [0]  # its input (3 image channels) cannot shrink
    assert [e["axis"] for e in table["dw.weight"]] == [0]  # depthwise: one axis, in = out
    assert sorted(e["axis"] for e in table["head.weight"]) == [1]  # the class axis is the output
    assert sorted(e["axis"] for e in table["expand.weight"]) == [0, 1]
    for entries in table.values():
        for e in entries:
            assert e["counts"][-1] in (16, 32) and all(c % 4 == 0 for c in e["counts"]) and min(e["ms"]) > 0
    assert axis_counts(2048, 16)[:3] == [48, 96, 144] and axis_counts(2048, 16)[-1] == 2048  # wide: coarser
    assert axis_counts(40, 16) == [16, 32, 40]


def test_latency_model_follows_a_jagged_kernel_table(chain):
    """A conv whose table says 16 output channels cost more than 24: the model predicts the slow count as slower
    than the dense one (a MAC model cannot), and the solver's single-group change agrees with two predictions;
    the same LUT without the table is smooth again (negative control)."""
    graph = chain
    cm = CostModel(graph)
    conv = "2.weight"  # the conv 16 -> 24
    [out_group] = [
        gids[0] for axis, (gids, _) in zip(cm.tensors[conv]["axis"], cm.tensors[conv]["axes"], strict=True) if axis == 0
    ]
    jagged = {conv: [{"axis": 0, "counts": [8, 16, 24], "ms": [1.0, 3.0, 2.0]}]}
    records = [
        {"index": i, "shares": {str(out_group): share}, "baseline_ms": 10.0, "latency_ms": 10.0 - 2.0 * (1 - share)}
        for i, share in enumerate([1.0, 0.5, 2 / 3, 1 / 3])
    ]
    with_table = LatencyModel(LUT({"fingerprint": graph.fingerprint()}, [], records, jagged), graph)
    smooth = LatencyModel(LUT({"fingerprint": graph.fingerprint()}, [], records), graph)
    slow = {out_group: 16 / 24}
    assert with_table.kernels.ratio(conv, slow) == pytest.approx(1.5)
    assert with_table.kernels.ratio(conv, {out_group: 12 / 24}) == pytest.approx(1.0)  # interpolated in 8..16
    i = with_table.ops.index(conv)
    assert with_table._features(slow)[i] > with_table._features({})[i]
    assert smooth._features(slow)[i] == pytest.approx(smooth._features({})[i] * 16 / 24)
    change = with_table.predict_change({}, out_group, 16 / 24)
    assert change == pytest.approx(with_table.predict(slow) - with_table.predict({}), abs=1e-12)


@pytest.mark.onnx
def test_cli_kernel_table_on_torch_cpu_and_refused_elsewhere(tmp_path, capsys):
    lut = tmp_path / "lut.json"
    base = ["--model", "lenet5", "--threads", "1", "--repeats", "3", "--calibration-masks", "3", "--round-to", "2"]
    assert (
        main(["profile-edges", *base, "--backend", "torch-cpu", "--per-op", "--kernel-table", "--out", str(lut)]) == 0
    )
    loaded = LUT.load(lut)
    assert loaded.kernels and loaded.meta["kernel_table"] is True
    model = LatencyModel(loaded, build_channel_graph(*_lenet()))
    assert set(loaded.kernels) <= set(model.ops) and all(t in model.kernels for t in loaded.kernels)
    capsys.readouterr()
    assert main(["profile-edges", *base, "--kernel-table", "--out", str(tmp_path / "x.json")]) == 2
    assert "cannot time ops alone" in capsys.readouterr().err and not (tmp_path / "x.json").exists()


def _lenet():
    from hwprune.models import get_model

    torch.manual_seed(0)
    return get_model("lenet5").eval(), torch.randn(1, 1, 28, 28), "lenet5"


# ----------------------------------------------------------------------------- alignment, found by timing


@pytest.mark.parametrize("block", [1, 4, 8, 16])
def test_alignment_step_is_the_smallest_step_that_runs_as_fast_as_coarser_ones(block):
    """A backend whose fast kernels need a multiple of ``block`` channels and fall back to one 30 % slower per
    multiply-add otherwise (resnet18 on ORT: 31 channels where 32 were fast cost 39 % more per MAC)."""
    from hwprune.latency.alignment import WINDOW, alignment_step

    def time_ms(c):
        return 1e-3 * c * c * (1.0 if c % block == 0 else 1.3)

    assert alignment_step({c: time_ms(c) for c in WINDOW}) == block
    rng = np.random.default_rng(0)  # timing noise of +-1 % does not move it
    assert alignment_step({c: time_ms(c) * rng.uniform(0.99, 1.01) for c in WINDOW}) == block


@pytest.mark.onnx
def test_cli_latency_align_reports_a_step_measured_on_the_backend(capsys):
    assert main(["latency", "align", "--backend", "ort-cpu", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "multiples of" in ln]
    assert len(lines) == 7 and lines[-1].startswith("ort-cpu (1 thread(s))")
    step = int(lines[-1].rsplit("--round-to ", 1)[1])
    assert step in (1, 2, 4, 8, 16, 32)
