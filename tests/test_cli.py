"""The CLI: the main job end to end, config files, and one clear line (exit 2, nothing written) on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from hwprune.cli import main
from hwprune.prune.masks import ChannelMask
from hwprune.results import ResultsStore


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "hwprune.cli", *map(str, args)], capture_output=True, text=True)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hwprune: error: ")
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.onnx
def test_demo_job_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--input-size", "64", "--repeats", "3", "--threads", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "compacted and verified" in text and "ort-cpu latency of the shipped ONNX file" in text
    assert (out / "resnet18_pruned.onnx").stat().st_size > 0
    mask = ChannelMask.load(out / "mask.json")
    assert len(mask.pruned_groups()) == 12  # every prunable group of resnet18
    [row] = ResultsStore(out / "results.csv").records()
    assert row.model == "resnet18" and row.mask_kind == "channel" and row.method == "l1"
    assert 0.45 <= row.density <= 0.55
    assert row.params < row.params_before and row.flops < row.flops_before
    assert row.latency_ms_median > 0 and row.latency_before_ms > 0 and row.latency_threads == 1
    assert json.loads(row.extra)["onnx_max_rel_diff"] <= 1e-4


def test_map_lists_groups_and_writes_json(tmp_path, capsys):
    assert main(["map", "--model", "resnet20", "--json", str(tmp_path / "g.json")]) == 0
    assert "prunable" in capsys.readouterr().out
    groups = json.loads((tmp_path / "g.json").read_text())
    assert any(g["prunable"] for g in groups)
    assert all(g["prunable"] or g["reason"] for g in groups)


def test_config_file_supplies_options_and_cli_overrides(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: resnet20\nratio: 0.25\nmethod: l2\n")
    out = tmp_path / "m.json"
    assert main(["mask", "--config", str(cfg), "--out", str(out), "--ratio", "0.5"]) == 0
    mask = ChannelMask.load(out)
    assert mask.meta["ratio"] == 0.5 and mask.meta["method"] == "l2"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "resnet20", "ratioo": 0.5}))
    proc = run_cli("mask", "--config", bad, "--out", tmp_path / "x.json")
    assert_one_line_error(proc, "ratioo")


def test_unknown_model_is_one_line():
    assert_one_line_error(run_cli("map", "--model", "resnt18"), "resnt18", "resnet18")


@pytest.fixture(scope="module")
def resnet20_mask(tmp_path_factory):
    path = tmp_path_factory.mktemp("mask") / "resnet20.json"
    assert main(["mask", "--model", "resnet20", "--out", str(path)]) == 0
    return path


def test_mask_for_another_model_is_refused(resnet20_mask, tmp_path):
    out = tmp_path / "x.onnx"
    proc = run_cli("export", "--model", "resnet32", "--mask", resnet20_mask, "--out", out)
    assert_one_line_error(proc, "mask was made for resnet20")
    assert not out.exists()


def test_mask_with_unknown_group_is_refused(resnet20_mask, tmp_path):
    data = json.loads(resnet20_mask.read_text())
    data["fingerprint"] = ""  # a hand-edited mask: only the group ids can be checked
    data["groups"]["999"] = {"size": 4, "keep": [0]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    proc = run_cli("export", "--model", "resnet20", "--mask", bad, "--out", tmp_path / "x.onnx")
    assert_one_line_error(proc, "group 999")
    assert list(tmp_path.iterdir()) == [bad]


def test_mask_keeping_no_channel_is_refused(resnet20_mask, tmp_path):
    data = json.loads(resnet20_mask.read_text())
    gid = next(iter(data["groups"]))
    data["groups"][gid]["keep"] = []
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    proc = run_cli("export", "--model", "resnet20", "--mask", bad, "--out", tmp_path / "x.onnx")
    assert_one_line_error(proc, "keeps no channel")
    assert list(tmp_path.iterdir()) == [bad]


def test_unwritable_output_is_refused_before_work(resnet20_mask, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = run_cli("export", "--model", "resnet20", "--mask", resnet20_mask, "--out", blocker / "x.onnx")
    assert_one_line_error(proc, "is a file, not a folder")  # not "does not exist": it does, as a file
    proc = run_cli("export", "--model", "resnet20", "--mask", resnet20_mask, "--out", tmp_path)
    assert_one_line_error(proc, "is a directory")


def test_export_failing_verification_writes_nothing(resnet20_mask, tmp_path, monkeypatch, capsys):
    import hwprune.export.pipeline as pipeline

    real = pipeline.compact_model

    def corrupted(graph, mask):
        gm = real(graph, mask)
        w = next(p for n, p in gm.named_parameters() if n.endswith("conv1.weight"))
        w.data.mul_(1.01)  # a 1 % error: what a wrong compaction would do
        return gm

    monkeypatch.setattr(pipeline, "compact_model", corrupted)
    out = tmp_path / "x.onnx"
    assert main(["export", "--model", "resnet20", "--mask", str(resnet20_mask), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "differs from the masked model" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_mask_round_trip_preserves_keep_sets(resnet20_mask):
    mask = ChannelMask.load(resnet20_mask)
    mask.save(resnet20_mask.with_name("copy.json"))
    again = ChannelMask.load(resnet20_mask.with_name("copy.json"))
    assert again.fingerprint == mask.fingerprint and again.keep.keys() == mask.keep.keys()
    for gid in mask.keep:
        np.testing.assert_array_equal(again.keep[gid], mask.keep[gid])


@pytest.mark.onnx
@pytest.mark.slow
def test_prune_to_latency_budget_writes_everything(tmp_path, capsys):
    out = tmp_path / "p"
    args = [
        "prune",
        "--model",
        "lenet5",
        "--input-size",
        "96",
        "--latency",
        "0.6",
        "--threads",
        "1",
        "--repeats",
        "5",
        "--out",
        str(out),
        "--results",
        str(tmp_path / "r.csv"),
    ]
    rc = main(args)
    text = capsys.readouterr().out
    assert "latency budget 0.600" in text and "compacted and verified" in text
    assert "latency model: on 16 calibration masks, each left out of its fit" in text
    for name in ("mask.json", "lut.json", "lut.csv", "lut.journal.jsonl", "lenet5_pruned.onnx"):
        assert (out / name).stat().st_size > 0, name
    [row] = ResultsStore(tmp_path / "r.csv").records()
    extra = json.loads(row.extra)
    assert row.target_kind == "latency" and row.target_value == 0.6
    assert extra["iterations"] and extra["loop_ratio"] in [it["measured"] for it in extra["iterations"]]
    assert rc == {"met": 0, "missed": 1, "undecided": 3}[extra["status"]]
    assert row.latency_backend == "ort-cpu" and row.latency_ms_median > 0
    mask = ChannelMask.load(out / "mask.json")
    assert mask.meta["target_kind"] == "latency" and mask.pruned_groups()
    # the LUT is reused when given, and refused for another input size
    proc = run_cli(
        "prune",
        "--model",
        "lenet5",
        "--input-size",
        "64",
        "--latency",
        "0.6",
        "--lut",
        out / "lut.json",
        "--out",
        tmp_path / "q",
    )
    assert_one_line_error(proc, "profile again")


def test_prune_to_flops_budget_with_finetuning(tmp_path, capsys):
    args = [
        "prune",
        "--model",
        "lenet5",
        "--flops",
        "0.5",
        "--data",
        "digits",
        "--importance",
        "taylor",
        "--finetune-epochs",
        "1",
        "--out",
        str(tmp_path / "p"),
        "--results",
        str(tmp_path / "r.csv"),
    ]
    assert main(args) == 0
    [row] = ResultsStore(tmp_path / "r.csv").records()
    assert row.target_kind == "flops" and 0 <= row.accuracy_top1 <= row.accuracy_top5 <= 1
    assert json.loads(row.extra)["measured_ratio"] <= 0.5
    out = capsys.readouterr().out
    assert "top-1 on the digits test split" in out and "fine-tuned 1 epoch(s)" in out
    extra = json.loads(row.extra)
    assert extra["top1_final"] == row.accuracy_top1 and {"top1_dense", "top1_pruned"} <= extra.keys()
    assert "top1_after_bn" not in extra  # lenet5 has no BatchNorm to re-estimate


def test_budget_needs_exactly_one_target():
    assert_one_line_error(run_cli("prune", "--model", "resnet20"), "needs one budget")
    proc = run_cli("prune", "--model", "resnet20", "--flops", "0.5", "--importance", "fisher")
    assert_one_line_error(proc, "needs data")
