"""Latency backends as an extension point: each entry honours the contract, and nothing else names one.

The worked example of adding one (docs/extending.md) runs in tests/test_extending.py.
"""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from hwprune.latency import BACKENDS, LatencyBackend, available_backends
from hwprune.latency.backends import Runner

ROOT = Path(__file__).resolve().parents[1]


def small_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)).eval()


@pytest.mark.parametrize("name", BACKENDS.names())
def test_every_backend_honours_the_contract(name, tmp_path):
    backend = BACKENDS.get(name)
    assert isinstance(backend, LatencyBackend) and backend.name == name
    assert isinstance(backend.round_to, int) and backend.round_to >= 1 and isinstance(backend.times_onnx, bool)
    why = backend.unavailable()
    assert why is None or (isinstance(why, str) and why), "unavailable() is None or a reason"
    assert (name in available_backends()) == (why is None)
    if why is not None:
        pytest.skip(f"{name} cannot run here: {why}")
    x = torch.randn(1, 3, 8, 8)
    model = small_model()
    model(x)  # materialise the lazy layer
    target = model
    if backend.times_onnx:  # an ONNX backend also takes a file
        from hwprune.export.onnx_export import export_onnx

        target = tmp_path / "m.onnx"
        export_onnx(model, x, target, "torchscript")
    runner = backend.prepare(target, x, threads=1)
    assert isinstance(runner, Runner) and runner.threads == 1 and runner.device and runner.versions
    seconds = runner.timer()()
    assert seconds > 0


def _string_constants(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    return [(n.lineno, n.value) for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def test_no_backend_name_literal_outside_its_class():
    """A backend's name, alignment and kind live in its class: code elsewhere asks the registry."""
    names = set(BACKENDS.names()) | {"ort-cuda", "cuda", "xla"}  # also those not registered on this machine
    offenders = [
        f"{path.relative_to(ROOT)}:{line} {value!r}"
        for path in sorted((ROOT / "hwprune").rglob("*.py"))
        if not path.name.startswith("backends") and "train" not in path.relative_to(ROOT / "hwprune").parts[:1]
        for line, value in _string_constants(path)
        if value in names
    ]
    assert not offenders, offenders
