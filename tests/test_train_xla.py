"""Training on the XLA device (torch_xla on PJRT CPU), in a subprocess so torch_xla stays out of this one."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.xla,
    pytest.mark.skipif(importlib.util.find_spec("torch_xla") is None, reason="torch_xla is not installed"),
]

SCRIPT = r"""
import json, sys
import numpy as np
import torch
from torch import nn
torch.set_num_threads(1)
from hwprune.data import get_dataset, make_loader
from hwprune.prune.masks import WeightMask
from hwprune.train import TrainConfig, evaluate, load_checkpoint, train

torch.manual_seed(0)
model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
rng = np.random.default_rng(0)
mask = WeightMask({"1.weight": rng.random((32, 64)) < 0.3, "3.weight": rng.random((10, 32)) < 0.5})
train_loader = make_loader(get_dataset("digits", "train"), 128, shuffle=True)
test_loader = make_loader(get_dataset("digits", "test"), 360, shuffle=False)
config = TrainConfig(epochs=2, lr=0.1, weight_decay=0.01, device="xla", checkpoint_dir=sys.argv[1])
result = train(model, train_loader, test_loader, config, weight_mask=mask)
params = {n: p.detach().cpu().numpy() for n, p in model.named_parameters()}
top1, top5, loss, seconds = evaluate(model, test_loader, "xla")
cpu_model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
load_checkpoint(cpu_model, sys.argv[1] + "/last")
print(json.dumps({
    "device": str(next(model.parameters()).device),
    "losses": [h.train_loss for h in result.history],
    "last_top1": result.last_top1,
    "eval": [top1, top5, loss],
    "violations": result.mask_violations,
    "masked_nonzero": sum(int((params[n][~k] != 0).sum()) for n, k in mask.keep.items()),
    "checkpoint_matches": all(np.array_equal(p.detach().numpy(), params[n]) for n, p in cpu_model.named_parameters()),
}))
"""


def test_xla_cpu_trains_with_mask(tmp_path):
    env = {**os.environ, "PJRT_DEVICE": "CPU", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "ckpt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["device"].startswith("xla")
    first, second = out["losses"]
    assert second < first
    assert out["last_top1"] > 0.5
    assert out["violations"] == 0 and out["masked_nonzero"] == 0
    top1, top5, _ = out["eval"]
    assert top1 == pytest.approx(out["last_top1"]) and top1 <= top5
    assert out["checkpoint_matches"]
