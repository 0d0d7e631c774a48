"""Fuzz: random small programs mixing handled ops with ops no handler knows, through the public API.

Every run must end in one of three ways: pruned and verified (the proof passed), or a one-line
HwpruneError that is not a verification failure (e.g. the budget is unreachable because the unknown
ops froze everything). A verification failure would mean an op was mis-mapped; any other exception
is a traceback the user should never see.
"""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import hwprune
from hwprune.errors import HwpruneError, VerificationError
from hwprune.export.verify import randomize_for_check

# (name, needs) -> how the op changes the channel count; "unknown" ops have no handler by design
OPS = [
    "conv",
    "bn_relu",
    "residual",
    "cumsum_channels",
    "flip_channels",
    "roll_space",
    "sort_channels",
    "gather_channels",
    "shuffle",
    "pixel_shuffle",
    "repeat",
    "stack_mean",
    "where",
    "split_cat",
    "conv_transpose",
    "grouped_conv_transpose",
    "interpolate",
]


class Program(nn.Module):
    """Applies ``spec`` (a list of (op, width)) to an image, then pools into a small classifier."""

    def __init__(self, spec, cin):
        super().__init__()
        self.spec, self.layers = spec, nn.ModuleDict()
        c = cin
        for i, (op, width) in enumerate(spec):
            key = f"l{i}"
            if op == "conv":
                self.layers[key], c = nn.Conv2d(c, width, 3, padding=1), width
            elif op == "bn_relu":
                self.layers[key] = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())
            elif op == "residual":
                self.layers[key] = nn.Conv2d(c, c, 1)
            elif op == "pixel_shuffle":  # c -> 4c -> c (sub-pixel up) keeps the spatial size for the next ops
                self.layers[key] = nn.Sequential(nn.Conv2d(c, 4 * width, 1), nn.PixelShuffle(2), nn.AvgPool2d(2))
                c = width
            elif op == "conv_transpose":
                self.layers[key], c = nn.ConvTranspose2d(c, width, 3, padding=1), width
            elif op == "grouped_conv_transpose":
                self.layers[key], c = (
                    nn.ConvTranspose2d(c, 2 * width, 3, padding=1, groups=2 if c % 2 == 0 else 1),
                    2 * width,
                )
            elif op == "repeat":
                c *= 2
            elif op == "shuffle" and c % 2:
                self.layers[key] = nn.Conv2d(c, c + 1, 1)
                c += 1
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        for i, (op, _) in enumerate(self.spec):
            layer = self.layers[f"l{i}"] if f"l{i}" in self.layers else None
            if op in ("conv", "bn_relu", "pixel_shuffle", "conv_transpose", "grouped_conv_transpose"):
                x = layer(x)
            elif op == "residual":
                x = x + layer(x)
            elif op == "cumsum_channels":
                x = torch.cumsum(x, 1)
            elif op == "flip_channels":
                x = torch.flip(x, [1])
            elif op == "roll_space":
                x = torch.roll(x, 1, 3)
            elif op == "sort_channels":
                x = torch.sort(x, 1).values
            elif op == "gather_channels":
                x = x[:, torch.arange(x.shape[1] - 1, -1, -1)]
            elif op == "shuffle":
                if layer is not None:
                    x = layer(x)
                n, c, h, w = x.shape
                x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
            elif op == "repeat":
                x = x.repeat(1, 2, 1, 1)
            elif op == "stack_mean":
                x = torch.stack([x, F.relu(x)], 1).mean(1)
            elif op == "where":
                x = torch.where(x > 0, x, 0.1 * x)
            elif op == "split_cat":
                a, b = x.split([1, x.shape[1] - 1], 1)
                x = torch.cat([b, a], 1)
            elif op == "interpolate":
                x = F.avg_pool2d(F.interpolate(x, scale_factor=2.0), 2)
        return self.head(x.mean((2, 3)))


@st.composite
def programs(draw):
    spec = [("conv", draw(st.integers(2, 8)))]
    for _ in range(draw(st.integers(1, 5))):
        spec.append((draw(st.sampled_from(OPS)), draw(st.integers(2, 8))))
    return spec


@settings(max_examples=20, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(spec=programs())
def test_random_programs_end_verified_or_in_one_clear_line(spec):
    torch.manual_seed(0)
    model = randomize_for_check(Program(spec, 3)).eval()
    x = torch.randn(2, 3, 8, 8)
    try:
        result = hwprune.prune(model, x, params=0.8, progress=False)
    except VerificationError as exc:  # an op mis-mapped: the proof caught a wrong model
        pytest.fail(f"{spec}: {exc}")
    except HwpruneError as exc:
        message = str(exc)
        assert message and "\n" not in message.strip(), f"{spec}: not one line: {message!r}"
        return
    assert result.export.max_rel_diff <= 1e-4, spec
    assert result.met == (result.report.measured_ratio <= 0.8 + 1e-9), spec
