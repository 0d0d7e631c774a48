"""The equivalence proof cannot pass vacuously, and it sees what a wrong compaction does.

Negative controls (deliberately wrong compactions, :data:`CONTROLS`) must each be caught by the
production check on models built with their init weights (BatchNorm the identity on every channel,
torchvision ViT heads zero), as a user gets them; ``benchmarks/verification_power.py`` runs the same
controls over the whole zoo. Non-finite weights, inputs and outputs and zero or constant references
fail with one clear line; a NaN output never compares as 0.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from torch import nn

from hwprune.errors import EquivalenceError, VerificationError
from hwprune.export.compact import changed_sites, compact_model, keep_table, masked_model, shrink
from hwprune.export.pipeline import compact_and_verify, export_pruned, prove_compaction, randomized_graph
from hwprune.export.verify import max_rel_diff, vacuity
from hwprune.graph_mapper import build_channel_graph
from hwprune.graph_mapper.types import GROUPED_IN
from hwprune.models import get_model
from hwprune.models.api import model_spec
from hwprune.prune.channel import random_scores, uniform_channel_mask
from hwprune.prune.masks import ChannelMask

# ----------------------------------------------------------------------------- negative controls
#
# Each control is a compactor ``(graph, mask) -> module`` that runs the real compaction and then
# breaks it the way a compaction bug would, reading the source values from ``graph.gm`` so that the
# production check applies the same bug to its randomised copy. It raises ``NotApplicable`` when the
# model has nothing it could break (the benchmark counts only the controls that apply).


class NotApplicable(Exception):
    """The model has no tensor this control could break."""


def _shrunk(graph, mask) -> dict[str, list]:
    """Changed sites per tensor, in graph order: what compaction shrinks."""
    out = defaultdict(list)
    for site, k in changed_sites(graph, keep_table(graph, mask)):
        out[site.tensor].append((site, k))
    return out


def _source(graph) -> dict[str, torch.Tensor]:
    return dict(graph.gm.named_parameters()) | dict(graph.gm.named_buffers())


def _put(gm: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = gm.get_submodule(owner_name)
    if attr in owner._parameters:
        owner._parameters[attr] = nn.Parameter(value.contiguous(), requires_grad=False)
    else:
        owner._buffers[attr] = value.contiguous()


def _first_k(k: np.ndarray) -> np.ndarray:
    """Keep flags of the same count, but the first positions (a compaction that ignores which were kept)."""
    wrong = np.arange(k.size) < k.sum()
    return wrong if not np.array_equal(wrong, k) else np.roll(k, 1)


def permuted_vector(graph, mask):
    """(a) The kept entries of one per-channel vector (norm scale, bias, running mean...) in the wrong order."""
    gm = compact_model(graph, mask)
    current = dict(gm.named_parameters()) | dict(gm.named_buffers())
    for name in _shrunk(graph, mask):
        t = current[name]
        if t.dim() == 1 and t.numel() >= 2:
            _put(gm, name, t.detach().roll(1))
            return gm
    raise NotApplicable("no per-channel vector loses channels")


def shifted_consumer_slice(graph, mask):
    """(b) One consumer (a conv / linear input axis) keeps the wrong input channels."""
    gm = compact_model(graph, mask)
    source = _source(graph)
    for name, entries in _shrunk(graph, mask).items():
        if source[name].dim() < 2:
            continue
        for i, (site, k) in enumerate(entries):
            if site.axis >= 1 and site.kind != GROUPED_IN:
                wrong = list(entries)
                wrong[i] = (site, _first_k(k))
                _put(gm, name, shrink(source[name].detach(), wrong))
                return gm
    raise NotApplicable("no consumer input axis loses channels")


def noise_filled(graph, mask):
    """(c) Every shrunk tensor filled with noise of its own scale (variances kept positive)."""
    gm = compact_model(graph, mask)
    current = dict(gm.named_parameters()) | dict(gm.named_buffers())
    gen = torch.Generator().manual_seed(1234)
    for name in _shrunk(graph, mask):
        t = current[name].detach()
        rms = float(t.float().pow(2).mean().sqrt()) if t.numel() else 0.0
        noise = torch.randn(t.shape, generator=gen) * (rms if rms > 0 else 0.1)
        _put(gm, name, (noise.abs() if name.endswith("running_var") else noise).to(t.dtype))
    return gm


def first_rows_of_vectors(graph, mask):
    """(d) Every per-channel vector keeps its first k entries instead of the kept ones (issue #10's example)."""
    gm = compact_model(graph, mask)
    source = _source(graph)
    changed = False
    for name, entries in _shrunk(graph, mask).items():
        if source[name].dim() == 1:
            _put(gm, name, shrink(source[name].detach(), [(s, _first_k(k)) for s, k in entries]))
            changed = True
    if not changed:
        raise NotApplicable("no per-channel vector loses channels")
    return gm


CONTROLS = {
    "permuted_vector": permuted_vector,
    "shifted_consumer_slice": shifted_consumer_slice,
    "noise_filled": noise_filled,
    "first_rows_of_vectors": first_rows_of_vectors,
}


def control_changes_model(control, graph, mask, random_graph=None) -> bool:
    """Whether ``control`` really differs from the correct compaction, on randomised values (on init values
    a wrong row of an identity BatchNorm equals the right one: that is what the check must see through).

    Raises :class:`NotApplicable` when the model has nothing the control could break.
    """
    graph = random_graph if random_graph is not None else randomized_graph(graph)
    right = dict(compact_model(graph, mask).state_dict())
    wrong = dict(control(graph, mask).state_dict())
    return right.keys() != wrong.keys() or any(not torch.equal(right[n], wrong[n]) for n in right)


def init_case(qualified: str, size: int, batch: int = 2, seed: int = 0):
    """A zoo model with its init weights, as a user gets it (not randomised; seeded), and an input."""
    torch.manual_seed(seed)
    model = get_model(qualified, num_classes=10, input_size=size).eval()
    channels = model_spec(qualified).in_channels
    x = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
    return model, x


def random_mask(graph, ratio: float = 0.4, seed: int = 1):
    return uniform_channel_mask(graph, random_scores(graph, seed), ratio)


# ----------------------------------------------------------------------------- comparisons


def test_max_rel_diff_never_reads_nan_or_inf_as_a_match():
    ref = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    assert max_rel_diff(ref, ref) == 0.0
    assert max_rel_diff(ref.double() * (1 + 1e-3), ref.double()) == pytest.approx(1e-3)
    nan = torch.full_like(ref, float("nan"))
    assert max_rel_diff(nan, nan) == math.inf  # an all-NaN output against itself: never 0
    assert max_rel_diff(nan, ref) == math.inf
    assert max_rel_diff(ref, nan) == math.inf
    one_nan = ref.clone()
    one_nan[1, 1] = float("nan")
    assert max_rel_diff(one_nan, ref) == math.inf
    inf = ref.clone()
    inf[0, 0] = float("inf")
    assert max_rel_diff(inf, ref) == math.inf
    minus = inf.clone()
    minus[0, 0] = -float("inf")
    assert max_rel_diff(inf, minus) == math.inf
    assert max_rel_diff(inf, inf.clone()) == 0.0  # the same infinity in the same place matches
    assert max_rel_diff([np.zeros(3)], [np.zeros(3), np.zeros(3)]) == math.inf
    assert max_rel_diff(np.zeros(3), np.zeros(4)) == math.inf


def test_vacuity_names_zero_constant_and_non_finite_references():
    assert vacuity(torch.zeros(2, 10)) == "zero everywhere"
    assert vacuity(torch.full((2, 10), 3.0)).startswith("constant")
    assert vacuity(torch.tensor([1.0, float("nan")])).startswith("not finite (1 NaN, 0 inf")
    assert vacuity(torch.tensor([0.0, 1e-3])) is None
    assert vacuity((torch.zeros(3), torch.tensor([1.0, 2.0]))) is None  # informative over all outputs


# ----------------------------------------------------------------------------- non-finite


def test_nan_weight_fails_before_compaction_naming_the_tensor():
    model, x = init_case("hwprune:resnet20", 32)
    graph = build_channel_graph(model, x, "resnet20")
    mask = random_mask(graph)
    name = next(n for n, _ in model.named_parameters() if n.endswith("bn1.weight"))
    with torch.no_grad():
        dict(model.named_parameters())[name][3] = float("nan")
    calls = []

    def compactor(g, m):
        calls.append(1)
        return compact_model(g, m)

    with pytest.raises(VerificationError, match=rf"^resnet20: parameter {name} has non-finite values \(1 NaN") as e:
        compact_and_verify(model, graph, mask, x, compactor=compactor)
    assert "\n" not in str(e.value) and not calls


def test_nan_buffer_and_nan_output_fail_with_one_line():
    model, x = init_case("hwprune:resnet20", 32)
    graph = build_channel_graph(model, x, "resnet20")
    mask = random_mask(graph)
    var = next(n for n, _ in model.named_buffers() if n.endswith("running_var"))
    with torch.no_grad():
        dict(model.named_buffers())[var][0] = float("inf")
    with pytest.raises(VerificationError, match=rf"buffer {var} has non-finite values \(0 NaN, 1 inf"):
        compact_and_verify(model, graph, mask, x)

    class NanHead(nn.Module):  # finite weights, every output NaN
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3), nn.Linear(8, 4)

        def forward(self, x):
            y = self.fc(torch.relu(self.conv(x)).mean((2, 3)))
            return torch.log(-(y.abs() + 1))

    model, x = NanHead().eval(), torch.randn(2, 3, 8, 8)
    graph = build_channel_graph(model, x, "nanhead")
    with pytest.raises(VerificationError, match=r"output on your weights is not finite \(8 NaN, 0 inf of 8") as e:
        compact_and_verify(model, graph, random_mask(graph, 0.5), x)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- vacuous references


class OneClassSoftmax(nn.Module):
    """Softmax over a single logit: the output is 1.0 whatever the weights and the input."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Linear(16, 1)

    def forward(self, x):
        return torch.softmax(self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3))), dim=1)


def test_constant_reference_fails_even_on_randomised_weights():
    model, x = OneClassSoftmax().eval(), torch.randn(2, 3, 8, 8)
    graph = build_channel_graph(model, x, "softmax1")
    mask = random_mask(graph, 0.5)
    assert mask.pruned_groups()
    with pytest.raises(VerificationError, match=r"output is constant \(2 values all equal to 1\) even on randomised"):
        compact_and_verify(model, graph, mask, x)
    with pytest.raises(VerificationError, match=r"output on your weights is constant"):
        compact_and_verify(model, graph, mask, x, randomized=False)


def test_constant_reference_fails_the_onnx_file_check(tmp_path):
    from hwprune.export.onnx_compact import prune_onnx_file
    from hwprune.export.onnx_export import export_onnx
    from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph

    export_onnx(OneClassSoftmax().eval(), torch.randn(2, 3, 8, 8), tmp_path / "dense.onnx", "torchscript")
    graph = build_onnx_channel_graph(tmp_path / "dense.onnx", "softmax1")
    mask = random_mask(graph, 0.5)
    assert mask.pruned_groups()
    with pytest.raises(VerificationError, match=r"output is constant \(2 values all equal to 1\) even on randomised"):
        prune_onnx_file(tmp_path / "dense.onnx", mask, tmp_path / "a.onnx", graph=graph)
    with pytest.raises(VerificationError, match=r"output on your weights is constant"):
        prune_onnx_file(tmp_path / "dense.onnx", mask, tmp_path / "b.onnx", graph=graph, randomized=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.onnx"]


def tiny_torchvision_vit():
    """torchvision's VisionTransformer (vit_b_16's class and init, zero head) at a test size."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128)
    return model.eval(), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.onnx
def test_vit_at_init_is_verified_on_the_randomised_copy(tmp_path):
    """A zero-output ViT: the old check passed noise at 0.0; now the randomised copy catches it and the
    export still succeeds, saying that the check on the user's weights could not fail."""
    model, x = tiny_torchvision_vit()
    with torch.no_grad():
        assert not model(x).abs().max()  # the head is zero-initialised
    graph = build_channel_graph(model, x, "vit")
    mask = random_mask(graph)
    # the residual stream ends in the zero head: pruning it would feed the head noise even on the user weights
    stream = next(g for g in graph.groups if any(s.tensor == "heads.head.weight" and s.axis == 1 for s in g.slices))
    mask = ChannelMask({g: k for g, k in mask.keep.items() if g != stream.id}, mask.model, mask.fingerprint)
    with torch.no_grad():  # the hole: on the user's weights a noise-filled compaction compares at 0.0
        assert max_rel_diff(noise_filled(graph, mask)(x), masked_model(model, graph, mask)(x)) == 0.0
    with pytest.raises(VerificationError, match="output on your weights is zero everywhere, so no comparison"):
        compact_and_verify(model, graph, mask, x, randomized=False, compactor=noise_filled)
    with pytest.raises(EquivalenceError, match="on randomised weights") as e:
        compact_and_verify(model, graph, mask, x, compactor=noise_filled)
    assert e.value.diff > 1e-2
    _, report = export_pruned(model, graph, mask, x, tmp_path / "vit.onnx")
    assert report.max_rel_diff == 0.0 and report.random_max_rel_diff <= 1e-4
    assert report.onnx_max_rel_diff == 0.0 and report.onnx_random_max_rel_diff <= 1e-4
    assert sum("zero everywhere" in n for n in report.notes) == 2
    assert "on randomised weights (seed 0)" in report.table()


class Float32Inside(nn.Module):
    """Computes one step in float32 whatever the input precision (as mixed-precision code does)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16)
        self.conv2, self.bn2, self.fc = nn.Conv2d(16, 16, 3), nn.BatchNorm2d(16), nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        h = torch.tanh(h.float() * 3.1).to(h.dtype)
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean((2, 3)))


def test_randomised_check_is_strict_in_float64_only_where_every_step_is_float64():
    from torch import fx

    from hwprune.export.pipeline import _in_float64

    x = torch.randn(2, 3, 12, 12)

    def traced(model):  # _in_float64 converts its reference in place
        return fx.symbolic_trace(copy.deepcopy(model))

    ref, out, exact = _in_float64(traced(Float32Inside().eval()), traced(Float32Inside().eval()), x)
    assert not exact and ref.dtype == out.dtype == torch.float64  # a float32 step: the float32 tolerance applies
    pure = OneClassSoftmax().eval()
    pure.fc = nn.Linear(16, 3)
    assert _in_float64(traced(pure), traced(pure), x[..., :8, :8])[2]
    assert not _in_float64(copy.deepcopy(pure), pure, x[..., :8, :8])[2]  # not traced: precision unknown
    for model, example in [(Float32Inside().eval(), x), (pure, x[..., :8, :8])]:
        graph = build_channel_graph(model, example, "net")
        proof = prove_compaction(model, graph, random_mask(graph, 0.5), example)
        assert proof.random_diff <= 1e-12  # float64 rounding on the right compaction


# ----------------------------------------------------------------------------- negative controls


def test_randomised_copy_catches_what_init_weights_miss():
    """Issue #10: keeping the first k rows of every per-channel vector passes on resnet18's init weights."""
    model, x = init_case("hwprune:resnet18", 32)
    graph = build_channel_graph(model, x, "resnet18")
    mask = random_mask(graph)
    assert control_changes_model(first_rows_of_vectors, graph, mask)
    _, diff = compact_and_verify(model, graph, mask, x, randomized=False, compactor=first_rows_of_vectors)
    assert diff <= 1e-4  # init BatchNorm is the same on every channel: the wrong rows look right
    with pytest.raises(EquivalenceError, match=r"differs from the masked model by .* on randomised weights") as e:
        compact_and_verify(model, graph, mask, x, compactor=first_rows_of_vectors)
    assert e.value.diff > 1e-2


CONTROL_MODELS = [
    ("hwprune:resnet18", 32),
    ("hwprune:mobilenet_v2", 32),
    ("hwprune:vgg11", 32),
    ("hwprune:lenet5", 32),
    ("torchvision:mobilenet_v2", 32),
    ("torchvision:squeezenet1_1", 32),  # no normalisation: a wrong first bias fades unless layers are rescaled
    ("timm:efficientnet_b0", 32),  # deep, SE gates, BatchNorm traced as a function: a wrong stem row fades
    ("timm:vit_tiny_patch16_224", 32),
]


@pytest.mark.parametrize(("qualified", "size"), CONTROL_MODELS, ids=[q for q, _ in CONTROL_MODELS])
def test_every_negative_control_is_caught(qualified, size):
    model, x = init_case(qualified, size)
    graph = build_channel_graph(model, x, qualified)
    mask = random_mask(graph)
    proof = prove_compaction(model, graph, mask, x)  # the right compaction passes both checks
    assert proof.diff <= 1e-4 and proof.random_diff <= 1e-4
    applied = 0
    for name, control in CONTROLS.items():
        try:
            changes = control_changes_model(control, graph, mask)
        except NotApplicable:
            assert qualified == "hwprune:lenet5" or name not in ("permuted_vector", "first_rows_of_vectors"), name
            continue
        assert changes, f"{name} does not change {qualified}"
        with pytest.raises(EquivalenceError, match="differs from the masked model") as e:
            compact_and_verify(model, graph, mask, x, compactor=control)
        assert e.value.diff > 1e-4, name
        applied += 1
    assert applied >= 2


def test_control_on_the_onnx_file_path_is_caught_on_randomised_initializers(tmp_path, monkeypatch):
    """``export --onnx``: a permuted per-channel vector in the compacted file; init values hide it."""
    import onnx
    from onnx import numpy_helper

    import hwprune.export.onnx_compact as oc
    from hwprune.export.onnx_export import export_onnx
    from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph

    model, x = init_case("hwprune:resnet20", 32)
    export_onnx(model, x, tmp_path / "dense.onnx", "torchscript")
    graph = build_onnx_channel_graph(tmp_path / "dense.onnx", "resnet20")
    mask = random_mask(graph)
    real = oc.compact_onnx

    def permuted(g, m):
        out = real(g, m)
        vectors = {s.tensor for s, _ in changed_sites(g, keep_table(g, m))}
        for i, t in enumerate(out.graph.initializer):
            a = numpy_helper.to_array(t)
            if t.name in vectors and a.ndim == 1 and a.size >= 2:
                out.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.roll(a, 1), t.name))
                return out
        raise AssertionError("no per-channel vector")

    monkeypatch.setattr(oc, "compact_onnx", permuted)
    report = oc.prune_onnx_file(tmp_path / "dense.onnx", mask, tmp_path / "a.onnx", graph=graph, randomized=False)
    assert report.max_rel_diff <= 1e-4  # every kept vector entry is equal at init: invisible
    with pytest.raises(EquivalenceError, match="in onnxruntime on randomised weights") as e:
        oc.prune_onnx_file(tmp_path / "dense.onnx", mask, tmp_path / "b.onnx", graph=graph)
    assert e.value.diff > 1e-2 and not (tmp_path / "b.onnx").exists()
    monkeypatch.setattr(oc, "compact_onnx", real)
    report = oc.prune_onnx_file(tmp_path / "dense.onnx", mask, tmp_path / "c.onnx", graph=graph)
    assert report.max_rel_diff <= 1e-4 and report.random_max_rel_diff <= 1e-4
    # a NaN initializer is refused by name before anything is compacted
    broken = onnx.load(str(tmp_path / "dense.onnx"))
    t = next(t for t in broken.graph.initializer if len(t.dims) == 4)
    a = numpy_helper.to_array(t).copy()
    a.flat[0] = np.nan
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    graph.gm = broken
    with pytest.raises(VerificationError, match=rf"initializer {t.name} has non-finite values \(1 NaN"):
        oc.prune_onnx_file(tmp_path / "dense.onnx", mask, tmp_path / "d.onnx", graph=graph)
