"""What hwprune prunes: a PyTorch module with its example input, or an ONNX file at its input shape."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hwprune import checks
from hwprune.errors import HwpruneError
from hwprune.graph_mapper import ChannelGraph, build_channel_graph


@dataclass
class ModelInput:
    """A PyTorch model with the input it is mapped, exported and timed at."""

    name: str
    model: nn.Module
    example: torch.Tensor
    front_end: str = "auto"  # how the model is captured: fx, export (torch.export) or auto (fx, else export)

    @classmethod
    def build(
        cls,
        name: str,
        input_size: int | None = None,
        batch: int = 1,
        num_classes: int | None = None,
        in_channels: int | None = None,
        seed: int = 0,
        weights: str | None = None,
        hf_config: str | None = None,
        front_end: str = "auto",
    ) -> ModelInput:
        """Build zoo model ``name`` (random weights, or ``weights``: a file or a torchvision weight name).

        ``hf:<family>`` builds a Hugging Face model from ``hf_config`` (or the family's small default) with
        token ids of ``input_size`` tokens as its example (images for a vision family).
        """
        from hwprune.models import get_model, model_spec

        checks.model_input(input_size, batch, num_classes, in_channels, seed)
        checks.front_end(front_end)
        if name.startswith("hf:"):
            return cls._hf(name, input_size, batch, seed, weights, hf_config, front_end)
        if hf_config is not None:
            raise HwpruneError("--hf-config is for --model hf:<family>")
        spec = model_spec(name)
        size = input_size or spec.default_input_size
        channels = in_channels or spec.in_channels
        torch.manual_seed(seed)
        kwargs = {"input_size": input_size} if input_size else {}
        model = get_model(name, num_classes=num_classes, in_channels=in_channels, **kwargs).eval()
        if weights is not None:
            from hwprune.models.weights import load_weights

            load_weights(model, weights, name)
        example = torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))
        return cls(name, model, example, front_end)

    @classmethod
    def _hf(cls, name, tokens, batch, seed, weights, hf_config, front_end) -> ModelInput:
        from hwprune.models.hf import DEFAULT_TOKENS, hf_example, hf_model

        model = hf_model(name.partition(":")[2], hf_config, seed=seed)
        if weights is not None:
            from hwprune.models.weights import load_weights

            load_weights(model, weights, name)
        return cls(name, model, hf_example(model, batch, tokens or DEFAULT_TOKENS, seed), front_end)

    def graph(self) -> ChannelGraph:
        return build_channel_graph(self.model, self.example, self.name, self.front_end)


@dataclass
class OnnxInput:
    """An ONNX file mapped at its input shape: pruned, compacted and timed as ONNX, no PyTorch model needed.

    ``model`` lists the initializers as parameters, so the weight-based importances score it unchanged.
    """

    path: Path
    channel_graph: ChannelGraph

    @classmethod
    def build(cls, path, input_shape=None) -> OnnxInput:
        from hwprune.graph_mapper.onnx_mapper import build_onnx_channel_graph

        return cls(Path(path), build_onnx_channel_graph(path, input_shape=input_shape))

    @property
    def name(self) -> str:
        return self.channel_graph.model_name

    def graph(self) -> ChannelGraph:
        return self.channel_graph

    @property
    def model(self):
        from hwprune.graph_mapper.onnx_mapper import InitializerParameters

        return InitializerParameters(self.channel_graph.gm)

    @property
    def example(self) -> torch.Tensor:
        """A random input of the (first) graph input's shape, for timing and for the mask's metadata."""
        return torch.randn(self.channel_graph.input_shape, generator=torch.Generator().manual_seed(0))
