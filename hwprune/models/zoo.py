"""The zoo the mapper is tested and benchmarked on, with the small inputs that keep CI fast."""

import os

BUILTIN_ZOO = [
    "lenet5",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v1",
    "mobilenet_v2",
]

# Smallest inputs that keep every spatial op valid (32 px unless listed); ViTs are built for the
# input (2x2 patches), MaxViT's partition size 7 needs 224.
TEST_INPUT_SIZES = {"alexnet": 64, "googlenet": 64, "inception_v3": 75, "maxvit_t": 224}

# A representative timm set (issue: resnet, efficientnet, mobilenetv3, convnext, regnet, vit, deit,
# swin, mixer, ghostnet, cspnet, dla, mobilevit), small variants at small inputs.
TIMM_MODELS = {
    "resnet18": 32,
    "efficientnet_b0": 32,
    "mobilenetv3_small_100": 32,
    "convnext_atto": 32,
    "regnetx_002": 32,
    "vit_tiny_patch16_224": 32,
    "deit_tiny_patch16_224": 32,
    "swin_tiny_patch4_window7_224": 56,
    "mixer_s16_224": 32,
    "ghostnet_100": 32,
    "cspresnet50": 64,
    "dla34": 32,
    "mobilevit_xxs": 64,
}

# torch.fx cannot trace these (control flow on shapes): they map through torch.export
UNTRACEABLE = {"timm:mobilevit_xxs"}

# over ~6 s to build, map, compact and export on one core (measured; marked slow, still run in CI)
SLOW = {
    "hwprune:vgg16",
    "hwprune:vgg19",
    "hwprune:resnet56",
    "hwprune:resnet50",
    "torchvision:convnext_base",
    "torchvision:convnext_large",
    "torchvision:densenet121",
    "torchvision:densenet161",
    "torchvision:densenet169",
    "torchvision:densenet201",
    "torchvision:efficientnet_b3",
    "torchvision:efficientnet_b4",
    "torchvision:efficientnet_b5",
    "torchvision:efficientnet_b6",
    "torchvision:efficientnet_b7",
    "torchvision:efficientnet_v2_l",
    "torchvision:efficientnet_v2_m",
    "torchvision:efficientnet_v2_s",
    "torchvision:maxvit_t",
    "torchvision:regnet_x_32gf",
    "torchvision:regnet_y_128gf",
    "torchvision:regnet_y_16gf",
    "torchvision:regnet_y_1_6gf",
    "torchvision:regnet_y_32gf",
    "torchvision:resnet101",
    "torchvision:resnet152",
    "torchvision:resnext101_32x8d",
    "torchvision:resnext101_64x4d",
    "torchvision:swin_b",
    "torchvision:swin_s",
    "torchvision:swin_t",
    "torchvision:swin_v2_b",
    "torchvision:swin_v2_s",
    "torchvision:swin_v2_t",
    "torchvision:vit_h_14",
    "torchvision:vit_l_16",
    "torchvision:vit_l_32",
    "torchvision:wide_resnet101_2",
    "timm:swin_tiny_patch4_window7_224",
}


# What CI tests: one model per architecture family (plain, residual, grouped, dense concat, inception,
# fire, channel shuffle, depthwise + SE, fused MBConv, RegNet, ConvNeXt, ViT, shifted windows, MLP-mixer,
# ghost, CSP, DLA) through both front-ends. HWPRUNE_FULL_ZOO=1 tests every model, as the benchmarks do
# (benchmarks/mapper.py, benchmarks/verification_power.py).
CI_ZOO = {
    *(f"hwprune:{n}" for n in ("lenet5", "vgg11", "resnet20", "resnet18", "mobilenet_v1", "mobilenet_v2")),
    *(
        f"torchvision:{n}"
        for n in (
            "alexnet",
            "vgg11_bn",
            "resnet18",
            "resnext50_32x4d",
            "densenet121",
            "googlenet",
            "inception_v3",
            "squeezenet1_1",
            "shufflenet_v2_x0_5",
            "mobilenet_v3_small",
            "mnasnet0_5",
            "efficientnet_b0",
            "regnet_x_400mf",
            "regnet_y_400mf",
            "convnext_tiny",
            "vit_b_16",
            "swin_t",
        )
    ),
    *(
        f"timm:{n}"
        for n in (
            "efficientnet_b0",
            "mobilenetv3_small_100",
            "convnext_atto",
            "regnetx_002",
            "vit_tiny_patch16_224",
            "mixer_s16_224",
            "ghostnet_100",
            "cspresnet50",
            "dla34",
        )
    ),
}


def zoo_input_size(name: str) -> int:
    """The input side the zoo tests use for torchvision model ``name``."""
    if name.startswith("vit_") and name.endswith("_14"):
        return 28
    return TEST_INPUT_SIZES.get(name, 32)


def torchvision_zoo() -> dict[str, tuple[str, int]]:
    """Every torchvision classification model: name -> (qualified name, test input side)."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return {n: (f"torchvision:{n}", zoo_input_size(n)) for n in names}


def timm_zoo() -> dict[str, tuple[str, int]]:
    """The timm set, when timm is installed (empty otherwise)."""
    import importlib.util

    if importlib.util.find_spec("timm") is None:
        return {}
    return {n: (f"timm:{n}", size) for n, size in TIMM_MODELS.items()}


def zoo_case(qualified: str, size: int | None, batch: int = 2, seed: int = 0):
    """A zoo model with random, well-scaled weights (for equivalence checks) and its example input."""
    import torch

    from hwprune.export.verify import randomize_for_check
    from hwprune.models.api import get_model, model_spec

    kwargs = {"input_size": size} if size else {}
    model = randomize_for_check(get_model(qualified, num_classes=10, **kwargs), seed).eval()
    spec = model_spec(qualified)
    size = size or spec.default_input_size
    x = torch.randn(batch, spec.in_channels, size, size, generator=torch.Generator().manual_seed(seed))
    return model, x


def zoo_cases() -> list[tuple[str, int | None]]:
    """(qualified name, input side) of every zoo model: built-in, the whole torchvision zoo, timm set."""
    builtin = [(f"hwprune:{n}", None) for n in BUILTIN_ZOO]
    return builtin + list(torchvision_zoo().values()) + list(timm_zoo().values())


def ci_zoo_cases() -> list[tuple[str, int | None]]:
    """The zoo the test suite runs: :data:`CI_ZOO`, or every model with ``HWPRUNE_FULL_ZOO=1``."""
    cases = zoo_cases()
    if os.environ.get("HWPRUNE_FULL_ZOO", "") not in ("", "0"):
        return cases
    return [c for c in cases if c[0] in CI_ZOO]
