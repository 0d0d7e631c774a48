import pytest
import torch
import torch.fx
from torch import nn

import hwprune.models as models
from hwprune.errors import HwpruneError, UnknownNameError
from hwprune.models import (
    ModelSpec,
    example_input,
    get_model,
    list_models,
    min_input_size,
    model_spec,
    register_model,
)
from hwprune.models.registry import BUILTIN_MODELS

SEED = list_models()
EXPECTED_SEED = {
    "lenet5", "vgg11", "vgg13", "vgg16", "vgg19", "resnet20", "resnet32", "resnet56",
    "resnet18", "resnet34", "resnet50", "mobilenet_v1", "mobilenet_v2",
    "vgg11_slim", "vgg16_quarter",  # narrow VGG-BN plans for the at-init sweeps on a CPU
}  # fmt: skip


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def _small(name: str) -> int:
    return max(min_input_size(name), 32)


def test_seed_names_listed_first_and_complete():
    assert set(SEED) == EXPECTED_SEED
    everything = list_models("all")
    assert everything[: len(SEED)] == SEED
    assert len(everything) == len(set(everything))
    assert "mobilenet_v3_small" in list_models("torchvision")
    assert "fasterrcnn_resnet50_fpn" not in list_models("torchvision")  # classification only
    with pytest.raises(HwpruneError):
        list_models("nope")


@pytest.mark.parametrize("name", SEED)
def test_seed_spec(name):
    spec = model_spec(name)
    assert isinstance(spec, ModelSpec)
    assert spec.name == name and spec.source == "hwprune"
    if name == "lenet5":
        assert (spec.default_input_size, spec.in_channels, spec.num_classes) == (28, 1, 10)
    elif name in ("resnet18", "resnet34", "resnet50", "mobilenet_v1", "mobilenet_v2"):
        assert (spec.default_input_size, spec.in_channels, spec.num_classes) == (224, 3, 1000)
    else:
        assert (spec.default_input_size, spec.in_channels, spec.num_classes) == (32, 3, 10)
    assert 1 <= min_input_size(name) <= spec.default_input_size
    with pytest.raises(AttributeError):
        spec.name = "other"  # frozen


@pytest.mark.parametrize("name", SEED)
def test_seed_forward_default_classes(name):
    size = _small(name)
    model = get_model(name, input_size=size).eval()
    x = example_input(name, batch=2, input_size=size)
    assert x.shape == (2, model_spec(name).in_channels, size, size)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, model_spec(name).num_classes)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("name", SEED)
def test_seed_parameters_honoured_and_fx_traceable(name):
    size = _small(name)
    in_channels = 3 if model_spec(name).in_channels == 1 else 1
    model = get_model(name, num_classes=7, in_channels=in_channels, input_size=size).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == in_channels
    x = example_input(name, batch=2, input_size=size, in_channels=in_channels, seed=3)
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        y = model(x)
        y_traced = traced(x)
    assert y.shape == (2, 7)
    torch.testing.assert_close(y_traced, y, rtol=0, atol=0)
    assert any(n.op == "call_module" for n in traced.graph.nodes)


@pytest.mark.parametrize("name", SEED)
def test_seed_runs_at_min_input_size(name):
    size = min_input_size(name)
    model = get_model(name, num_classes=3, input_size=size).eval()
    with torch.no_grad():
        assert model(example_input(name, input_size=size)).shape == (1, 3)


@pytest.mark.parametrize("name", ["lenet5", "vgg11"])
def test_flatten_linear_adapts_to_input_size(name):
    for size in (32, 64) if name == "vgg11" else (28, 32):
        model = get_model(name, input_size=size).eval()
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        with torch.no_grad():
            assert model(example_input(name, batch=2, input_size=size)).shape == (2, 10)
        if name == "vgg11":
            assert linears[0].in_features == 512 * (size // 32) ** 2
        else:
            assert linears[0].in_features == 16 * (((size - 4) // 2 - 4) // 2) ** 2


def test_lenet_too_small_input_is_one_line_error():
    with pytest.raises(HwpruneError) as info:
        get_model("lenet5", input_size=8)
    assert "\n" not in str(info.value)


def test_cifar_resnet_uses_conv_shortcuts():
    model = get_model("resnet20")
    shortcut_convs = [m for n, m in model.named_modules() if ".shortcut." in n + "." and isinstance(m, nn.Conv2d)]
    assert len(shortcut_convs) == 2  # stage 2 and 3 entry blocks: option B, 1x1 conv + BN
    assert all(c.kernel_size == (1, 1) and c.stride == (2, 2) for c in shortcut_convs)
    # 6n + 2 weighted layers: 19 3x3 convs plus the Linear, for n = 3.
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules()) == 19


def test_mobilenet_v1_structure():
    model = get_model("mobilenet_v1")
    depthwise = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 13
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    params = sum(p.numel() for p in model.parameters())
    assert 4.1e6 < params < 4.3e6  # the paper's 4.2M


def test_example_input_deterministic():
    a = example_input("resnet20", batch=3, seed=5)
    b = example_input("resnet20", batch=3, seed=5)
    c = example_input("resnet20", batch=3, seed=6)
    assert a.shape == (3, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert example_input("lenet5").shape == (1, 1, 28, 28)


def test_unknown_name_is_one_line_with_suggestion():
    with pytest.raises(UnknownNameError) as info:
        get_model("resnet2O")
    message = str(info.value)
    assert "\n" not in message
    assert "resnet20" in message and "hwprune models" in message
    assert isinstance(info.value, HwpruneError)
    with pytest.raises(UnknownNameError):
        model_spec("no_such_model_at_all")
    with pytest.raises(UnknownNameError):
        get_model("nosource:resnet18")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_torchvision_models_with_one_channel(name):
    model = get_model(f"torchvision:{name}", num_classes=5, in_channels=1, input_size=64).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    with torch.no_grad():
        assert model(example_input(name, batch=2, input_size=64, in_channels=1)).shape == (2, 5)


def test_torchvision_fallback_and_specs():
    assert model_spec("mobilenet_v3_small") == ModelSpec("mobilenet_v3_small", "torchvision", 224, 3, 1000)
    assert model_spec("inception_v3").default_input_size == 299
    assert model_spec("vit_b_16").default_input_size == 224
    assert min_input_size("vit_b_16") == 16 and min_input_size("maxvit_t") == 224
    # The built-in vgg11 (CIFAR, BN) shadows torchvision's; the prefix reaches torchvision's.
    assert model_spec("vgg11").source == "hwprune"
    assert model_spec("torchvision:vgg11").source == "torchvision"


def test_torchvision_vit_built_for_small_input():
    model = get_model("vit_b_32", num_classes=4, input_size=32).eval()
    with torch.no_grad():
        assert model(example_input("vit_b_32", input_size=32)).shape == (1, 4)


def test_googlenet_has_no_aux_heads_in_train_mode():
    model = get_model("googlenet", num_classes=3).train()
    y = model(example_input("googlenet", batch=2, input_size=32))
    assert isinstance(y, torch.Tensor) and y.shape == (2, 3)


def test_replace_first_conv_keeps_geometry():
    model = get_model("torchvision:vgg11", num_classes=2)
    old = model.features[0]
    new = models.replace_first_conv(model, 4)
    assert model.features[0] is new and new.in_channels == 4
    assert (new.out_channels, new.kernel_size, new.stride, new.padding) == (
        old.out_channels,
        old.kernel_size,
        old.stride,
        old.padding,
    )


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):

        @register_model("lenet5")
        def again(num_classes, in_channels, input_size):
            return nn.Identity()


def test_register_custom_model(monkeypatch):
    # Register into a copy so other tests that iterate list_models() never see this model.
    monkeypatch.setattr(BUILTIN_MODELS, "_items", dict(BUILTIN_MODELS._items))
    name = "test_tiny_custom_model"

    @register_model(name, num_classes=2, in_channels=1, input_size=8)
    def tiny(num_classes, in_channels, input_size):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * input_size**2, num_classes))

    assert name in list_models()
    assert model_spec(name) == ModelSpec(name, "hwprune", 8, 1, 2)
    assert get_model(name)(example_input(name)).shape == (1, 2)


def test_custom_registration_did_not_leak():
    assert "test_tiny_custom_model" not in list_models()


def test_ci_zoo_is_a_named_subset_and_the_full_zoo_is_one_switch_away(monkeypatch):
    """Every CI_ZOO name exists (a typo would silently drop a family from CI); HWPRUNE_FULL_ZOO=1 runs all."""
    from hwprune.models.zoo import CI_ZOO, ci_zoo_cases, timm_zoo, zoo_cases

    names = {q for q, _ in zoo_cases()}
    expected = CI_ZOO if timm_zoo() else {q for q in CI_ZOO if not q.startswith("timm:")}
    assert {q for q, _ in ci_zoo_cases()} == expected <= names
    assert len(expected) < len(names)
    monkeypatch.setenv("HWPRUNE_FULL_ZOO", "1")
    assert ci_zoo_cases() == zoo_cases()
