"""The zoo the mapper is tested and benchmarked on, with the small inputs that keep CI fast."""

SEED_MODELS = [
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

# name -> (source-qualified name, input size); input sizes are the smallest that keep every
# spatial op valid, and vit is built for 32 px (2x2 patches) so it maps in seconds
TORCHVISION_MODELS = {
    "resnet18": ("torchvision:resnet18", 32),
    "resnet50": ("torchvision:resnet50", 32),
    "resnext50_32x4d": ("torchvision:resnext50_32x4d", 32),
    "mobilenet_v2": ("torchvision:mobilenet_v2", 32),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", 32),
    "efficientnet_b0": ("torchvision:efficientnet_b0", 32),
    "densenet121": ("torchvision:densenet121", 32),
    "googlenet": ("torchvision:googlenet", 64),
    "shufflenet_v2_x1_0": ("torchvision:shufflenet_v2_x1_0", 32),
    "regnet_y_400mf": ("torchvision:regnet_y_400mf", 32),
    "squeezenet1_0": ("torchvision:squeezenet1_0", 32),
    "vgg11_bn": ("torchvision:vgg11_bn", 32),
    "convnext_tiny": ("torchvision:convnext_tiny", 32),
    "vit_b_16": ("torchvision:vit_b_16", 32),
}

SLOW = {
    "vgg16",
    "vgg19",
    "resnet56",
    "resnext50_32x4d",
    "densenet121",
    "convnext_tiny",
    "vit_b_16",
    "resnet50",
}


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
    return [(f"seed:{n}", None) for n in SEED_MODELS] + list(TORCHVISION_MODELS.values())
