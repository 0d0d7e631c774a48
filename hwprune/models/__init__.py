"""Model zoo: hwprune's built-in models (tested here), torchvision classification models, and timm if installed.

Public API: :func:`get_model`, :func:`model_spec`, :func:`list_models`, :func:`example_input`,
:func:`min_input_size`, :func:`register_model` and :class:`ModelSpec`.
"""

from hwprune.models import imagenet, lenet, mobilenet_v1, resnet_cifar, vgg  # noqa: F401  (register)
from hwprune.models._torchvision import replace_first_conv
from hwprune.models.api import example_input, get_model, list_models, min_input_size, model_spec
from hwprune.models.registry import ModelSpec, register_model

__all__ = [
    "ModelSpec",
    "example_input",
    "get_model",
    "list_models",
    "min_input_size",
    "model_spec",
    "register_model",
    "replace_first_conv",
]
