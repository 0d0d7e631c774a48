"""The prune-at-init sweep: one row per run, exact densities, collapse flag, compression modes."""

import json

import pytest
import torch

from hwprune.at_init.sweep import masked_flops, run_sweep
from hwprune.errors import HwpruneError
from hwprune.prune.weight_masking import density_from
from hwprune.results import ResultsStore
from hwprune.train import TrainConfig

torch.set_num_threads(1)


def _sweep(tmp_path, compressions, mode, pruners=("rand", "synflow"), seeds=(0,), **kw):
    return run_sweep(
        "lenet5",
        "digits",
        pruners,
        compressions,
        mode,
        seeds=list(seeds),
        epochs=1,
        train_config=TrainConfig(batch_size=128),
        synflow_rounds=5,
        results_path=tmp_path / "results.csv",
        out_dir=tmp_path / "out",
        progress=False,
        **kw,
    )


def test_sweep_rows_ratio(tmp_path):
    records = _sweep(tmp_path, [2, 10], "ratio")
    rows = ResultsStore(tmp_path / "results.csv").records()
    assert len(rows) == len(records) == 4
    assert {(r.method, r.target_value) for r in rows} == {(m, c) for m in ("rand", "synflow") for c in (2.0, 10.0)}
    for r in rows:
        extra = json.loads(r.extra)
        kept, total = (sum(v[i] for v in extra["layer_kept"].values()) for i in (0, 1))
        assert abs(kept - total / r.target_value) <= 1  # exact to one weight
        assert r.density == pytest.approx(1 / r.target_value, abs=1.0 / total)
        assert 0 <= r.accuracy_top1 <= 1 and 0 <= r.accuracy_top5 <= 1
        assert r.mask_kind == "weight" and r.target_kind == "density"
        assert extra["compression_mode"] == "ratio"
        assert "collapsed" in extra and isinstance(extra["collapsed_layers"], list)
        assert extra["testing_seconds"] > 0
        assert r.params < r.params_before and r.flops < r.flops_before
        assert r.density_whole_model > r.density  # biases stay dense
        assert extra["rounds"] == (5 if r.method == "synflow" else 1)


def test_sweep_exponent_mode(tmp_path):
    records = _sweep(tmp_path, [0.5, 1], "exponent", pruners=("mag",))
    for r in records:
        extra = r.extra_dict()
        kept, total = (sum(v[i] for v in extra["layer_kept"].values()) for i in (0, 1))
        assert extra["target_density"] == pytest.approx(10**-r.target_value)
        assert abs(kept - total * 10**-r.target_value) <= 1


def test_sweep_refuses_bad_input(tmp_path):
    with pytest.raises(HwpruneError, match="exponent"):
        _sweep(tmp_path, [-1], "exponent")
    with pytest.raises(HwpruneError, match="unknown pruner"):
        _sweep(tmp_path, [2], "ratio", pruners=("nope",))
    with pytest.raises(HwpruneError, match="compression mode"):
        _sweep(tmp_path, [2], "log")
    assert density_from(1, "exponent") == pytest.approx(0.1)


def test_masked_flops_scales_by_layer_density():
    import numpy as np

    from hwprune.prune.masks import WeightMask

    mask = WeightMask({"a.weight": np.array([True, False, False, False]), "b.weight": np.ones(2, bool)})
    total, per = masked_flops({"a": 100, "b": 50}, 200, mask)
    assert per == {"a": 25, "b": 50} and total == 125


def test_cli_one_line_error(tmp_path, capsys):
    from hwprune.cli import main

    argv = ["--compression-mode", "exponent", "--compression-list", "-1", "--results", str(tmp_path / "r.csv")]
    assert main(["prune-at-init", *argv]) == 2
    captured = capsys.readouterr()
    assert "exponent" in captured.out  # the meaning used is printed
    assert captured.err.strip().startswith("hwprune prune-at-init: error:") and captured.err.count("\n") == 1


def test_sweep_seed_reaches_gcs_and_mask_rule_and_train_mode_are_passed(tmp_path, monkeypatch):
    import hwprune.at_init.sweep as sweep
    from hwprune.models import get_model

    def same_weights_for_every_seed(setup, seed):  # so only the scorer's own randomness can differ
        torch.manual_seed(123)
        return get_model(setup.model_name, num_classes=setup.num_classes, in_channels=setup.in_channels)

    calls = []
    real = sweep.prune_weights

    def recording(model, method, batches, density, **kw):
        mask = real(model, method, batches, density, **kw)
        calls.append((method, kw, mask))
        return mask

    monkeypatch.setattr(sweep, "_build", same_weights_for_every_seed)
    monkeypatch.setattr(sweep, "prune_weights", recording)
    _sweep(tmp_path, [10], "ratio", pruners=("gcs", "mag"), seeds=[0, 1, 0])
    gcs = [(kw, mask) for method, kw, mask in calls if method == "gcs"]
    assert [kw["seed"] for kw, _ in gcs] == [0, 1, 0] and all(kw["train_mode"] is True for kw, _ in gcs)
    assert all(kw["rule"] == "reference" for _, kw, _ in calls)
    assert all("seed" not in kw for method, kw, _ in calls if method == "mag")  # mag draws nothing
    differ = [
        sum(int((a != b).sum()) for a, b in zip(x.keep.values(), y.keep.values(), strict=True))
        for x, y in ((gcs[0][1], gcs[1][1]), (gcs[0][1], gcs[2][1]))
    ]
    assert differ[0] > 0 and differ[1] == 0  # seed 1 re-initialises differently; seed 0 twice is the same run
    rows = ResultsStore(tmp_path / "results.csv").records()
    assert {json.loads(r.extra)["mask_rule"] for r in rows} == {"reference"}

    calls.clear()
    _sweep(tmp_path, [10], "ratio", pruners=("gcs",), mask_rule="exact", gcs_train_mode=False)
    assert calls[0][1]["train_mode"] is False and calls[0][1]["rule"] == "exact"
    with pytest.raises(HwpruneError, match="mask rule"):
        _sweep(tmp_path, [10], "ratio", mask_rule="nearest")


def test_cli_passes_mask_rule_and_gcs_mode(monkeypatch, tmp_path):
    import hwprune.at_init.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "run_sweep", lambda *a, **kw: seen.update(kw) or [])
    common = ["--results", str(tmp_path / "r.csv"), "--out", str(tmp_path / "out"), "--no-progress"]
    assert cli.main(common) == 0
    assert seen["mask_rule"] == "reference" and seen["gcs_train_mode"] is True
    assert cli.main(["--mask-rule", "exact", "--gcs-eval-mode", *common]) == 0
    assert seen["mask_rule"] == "exact" and seen["gcs_train_mode"] is False
