"""Accelerator latency backends: xla (on PJRT CPU, in a subprocess), cuda and ort-cuda (skipped without a GPU)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from hwprune.errors import HwpruneError
from hwprune.latency import BACKENDS, available_backends, measure
from hwprune.latency.backends import Runner
from hwprune.latency.measurement import time_interleaved

torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()


def small_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)
    ).eval()


def test_backends_registered_and_availability_is_honest():
    assert {"xla", "cuda"} <= set(BACKENDS.names())
    avail = available_backends()
    assert {"torch-cpu", "ort-cpu"} <= set(avail)
    assert ("cuda" in avail) == HAS_CUDA
    assert ("ort-cuda" in BACKENDS) == ("ort-cuda" in BACKENDS.names())


def test_unavailable_cuda_fails_at_prepare_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HwpruneError, match="'cuda' is unavailable") as err:
        BACKENDS.get("cuda").prepare(small_model(), torch.randn(1, 3, 8, 8))
    msg = str(err.value)
    assert "\n" not in msg and "available here: " in msg and "torch-cpu" in msg
    assert "cuda" not in msg.split("available here: ")[1].split(", ")


def test_unavailable_xla_fails_before_importing_torch_xla(monkeypatch):
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    imported_before = "torch_xla" in sys.modules
    with pytest.raises(HwpruneError, match="'xla' is unavailable: .*PJRT_DEVICE") as err:
        BACKENDS.get("xla").prepare(small_model(), torch.randn(1, 3, 8, 8))
    assert "\n" not in str(err.value) and "torch-cpu" in str(err.value)
    assert imported_before or "torch_xla" not in sys.modules


def test_timer_prefers_the_runners_own_clock():
    calls = []
    own = Runner(lambda: calls.append("run"), "dev", "p", 1, {}, lambda: 0.002)
    assert own.timer()() == 0.002 and not calls
    host = Runner(lambda: calls.append("run"), "dev", "p", 1, {})
    assert host.timer()() >= 0 and calls == ["run"]
    samples = time_interleaved([own.timer()], repeats=4)
    assert samples == [[0.002] * 4]


def test_measure_on_cpu_uses_host_time():
    [m] = measure("torch-cpu", [small_model()], torch.randn(1, 3, 8, 8), repeats=3)
    assert m.backend == "torch-cpu" and 3 <= m.samples <= 15 and m.median_ms > 0  # more rounds until precise


XLA_SCRIPT = textwrap.dedent(
    """
    import json, torch
    from torch import nn
    torch.set_num_threads(1)
    from hwprune.latency.backends import BACKENDS, measure
    from hwprune.latency.measurement import time_interleaved
    import hwprune.latency.backends_cuda  # registers cuda/ort-cuda and the availability checks
    from hwprune.latency.backends_xla import compile_count
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).eval()
    x = torch.randn(2, 3, 16, 16)
    runner = BACKENDS.get("xla").prepare(model, x)
    out = runner.run().cpu()
    before = compile_count()
    time_interleaved([runner.timer()], 5)
    after = compile_count()
    [m] = measure("xla", [model], x, threads=1, repeats=5)
    print(json.dumps({
        "m": m.as_dict(), "before": before, "after": after,
        "close": bool(torch.allclose(out, model(x), atol=1e-4)),
        "model_device": str(next(model.parameters()).device),
    }))
    """
)


@pytest.mark.xla
@pytest.mark.slow
def test_xla_times_a_model_for_real_without_compiling_in_the_timed_region():
    pytest.importorskip("torch_xla")
    env = {**os.environ, "PJRT_DEVICE": "CPU"}
    proc = subprocess.run(
        [sys.executable, "-c", XLA_SCRIPT], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    m = res["m"]
    assert res["before"] >= 1 and res["after"] == res["before"]  # compiled in warm-up, never while timed
    assert res["close"] and res["model_device"] == "cpu"  # it computes the model; the caller's copy stays put
    assert m["backend"] == "xla" and 5 <= m["samples"] <= 25 and 0 < m["median_ms"] < 10_000 and m["iqr_ms"] >= 0
    assert m["batch"] == 2 and m["input_shape"] == [2, 3, 16, 16] and m["threads"] == 1
    assert m["device"].startswith("xla:CPU") and m["provider"] == "torch_xla/PJRT:CPU"
    assert m["versions"]["PJRT_DEVICE"] == "CPU" and m["versions"]["torch_xla"]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_cuda_times_a_model_with_events():
    model = small_model()
    x = torch.randn(2, 3, 16, 16)
    runner = BACKENDS.get("cuda").prepare(model, x)
    assert runner.timed_run is not None and runner.device.startswith("cuda:")
    assert torch.backends.cudnn.benchmark and next(model.parameters()).device.type == "cpu"
    assert 0 < runner.timed_run() < 10
    [m] = measure("cuda", [model], x, repeats=5, precision=None)  # fixed rounds: exactly as many as asked
    assert m.samples == 5 and 0 < m.median_ms < 10_000 and m.versions["cuda"]


@pytest.mark.gpu
@pytest.mark.onnx
@pytest.mark.skipif(not HAS_CUDA or "ort-cuda" not in BACKENDS, reason="no CUDA device or no ort CUDA provider")
def test_ort_cuda_times_a_model():
    [m] = measure("ort-cuda", [small_model()], torch.randn(2, 3, 16, 16), repeats=5)
    assert m.provider == "CUDAExecutionProvider" and m.median_ms > 0
