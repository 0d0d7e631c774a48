"""DDP under torchrun: 2 CPU ranks (gloo) train a masked model for one epoch and end identical."""

import json

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.torchrun import run_on_two_ranks, serial

pytestmark = [pytest.mark.slow, serial]

SCRIPT = r"""
import json, os, sys
import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file
torch.set_num_threads(1)
from hwprune.data import get_dataset
from hwprune.prune.masks import WeightMask
from hwprune.train import TrainConfig, train_ddp

out = sys.argv[1]
rank = int(os.environ["RANK"])
torch.manual_seed(rank)  # different initial weights per rank: DDP must broadcast rank 0's
model = nn.Sequential(
    nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(128, 10),
)
mask = WeightMask.load(out + "/mask.json")
config = TrainConfig(epochs=1, batch_size=64, lr=0.05, weight_decay=0.01, nesterov=True,
                     checkpoint_dir=out + "/ckpt", log_dir=out + "/log")
result = train_ddp(model, get_dataset("digits", "train"), get_dataset("digits", "test"), config, weight_mask=mask)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
with open(f"{out}/result{rank}.json", "w") as fh:
    json.dump(result.to_json(), fh)
"""


def test_ddp_two_cpu_ranks_with_mask(tmp_path):
    rng = np.random.default_rng(0)
    keep = {"0.weight": rng.random((8, 1, 3, 3)) < 0.5, "3.weight": rng.random((8, 8, 3, 3)) < 0.3}
    from hwprune.prune.masks import WeightMask

    WeightMask(keep).save(tmp_path / "mask.json")
    run_on_two_ranks(SCRIPT, tmp_path, str(tmp_path))

    r0, r1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert r0.keys() == r1.keys()
    for name in r0:  # parameters and BatchNorm buffers alike
        np.testing.assert_array_equal(r0[name], r1[name], err_msg=name)
    for name, k in keep.items():
        assert (r0[name][~k] == 0).all(), name
        assert (r0[name][k] != 0).any(), name

    res0, res1 = (json.loads((tmp_path / f"result{r}.json").read_text()) for r in (0, 1))
    fields = ("lr", "train_loss", "train_top1", "train_top5", "test_loss", "test_top1", "test_top5")
    assert [[h[f] for f in fields] for h in res0["history"]] == [[h[f] for f in fields] for h in res1["history"]]
    assert res0["last_top1"] == res1["last_top1"] > 0.3
    assert res0["mask_violations"] == res1["mask_violations"] == 0
    assert set(res0["checkpoints"]) == {"first", "best", "last"} and res1["checkpoints"] == {}
    ckpt = load_file(tmp_path / "ckpt" / "last.safetensors")
    for name in r0:
        np.testing.assert_array_equal(ckpt[name], r0[name], err_msg=name)
    assert len((tmp_path / "log" / "metrics.jsonl").read_text().splitlines()) == 1  # rank 0 only
