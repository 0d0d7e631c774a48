"""Bad input for every command: the inputs, the cases, and how a run is judged.

Shared by ``tests/test_bad_input.py`` (in-process, through ``hwprune.cli.main``) and
``benchmarks/robustness.py`` (through the installed ``hwprune`` entry point). A case is a command
line built from prepared inputs and an empty work folder, the exit status it must end with, and a
phrase its one stderr line must contain; the work folder and the inputs must be left as they were.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MODEL = "lenet5"  # the smallest built-in model: builds and maps in well under a second


@dataclass
class Inputs:
    """Valid and broken input files, written once under ``root``."""

    root: Path
    mask: Path  # a valid lenet5 channel mask
    mask_r20_32: Path  # a resnet20 mask made at 32 px
    lut: Path  # a valid lenet5 LUT (made up numbers, the right structure)
    journal: Path  # a valid lenet5 profiler journal for `profile-edges --journal` defaults
    onnx: Path  # lenet5 as ONNX
    results: Path  # a results CSV with one row
    sweep_blocked: Path  # a sweep results CSV whose weights file holds a pickled object
    weight_mask: Path  # a valid weight mask
    afile: Path  # a plain file where a folder is expected
    folder: Path  # an existing folder where a file is expected
    readonly: Path  # a folder nothing can be written into (even by root)

    def file(self, name: str) -> Path:
        return self.root / name


def _write(path: Path, data) -> Path:
    if isinstance(data, (dict, list)):
        data = json.dumps(data)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _mutate(src: Path, dst: Path, fn: Callable[[dict], None]) -> Path:
    data = json.loads(src.read_text())
    fn(data)
    return _write(dst, json.dumps(data))


def _probe(folder: Path) -> bool:
    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.unlink(name)
    return True


def make_readonly(folder: Path) -> Path:
    """A folder that refuses new files: mode 555, made immutable when root ignores modes, else /proc."""
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    if not _probe(folder):
        return folder
    subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
    if not _probe(folder):
        return folder
    return Path("/proc")  # nothing can be created in /proc, not even by root


def release_readonly(folder: Path) -> None:
    """Undo :func:`make_readonly` so the folder can be removed."""
    if str(folder).startswith("/proc"):
        return
    subprocess.run(["chattr", "-i", str(folder)], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        folder.chmod(0o755)


def make_inputs(root: Path) -> Inputs:
    """Write every input the cases use into ``root`` (a few seconds: lenet5, resnet20's mask, one ONNX export)."""
    import numpy as np
    import torch

    from hwprune.export.onnx_export import DEFAULT_EXPORTER, export_onnx
    from hwprune.graph_mapper.cost import CostModel
    from hwprune.latency.lut import LUT, EdgePoint
    from hwprune.latency.profiler import _header, kept_for, profiled_groups
    from hwprune.prune.masks import WeightMask
    from hwprune.results import ResultsStore, RunRecord
    from hwprune.workflow import ModelInput, make_mask

    root.mkdir(parents=True, exist_ok=True)
    job = ModelInput.build(MODEL)
    graph = job.graph()
    mask = root / "mask.json"
    make_mask(job, graph, "l1", 0.5).save(mask)
    r20 = ModelInput.build("resnet20", input_size=32)
    mask_r20 = root / "resnet20_32px.json"
    make_mask(r20, r20.graph(), "l1", 0.5).save(mask_r20)

    # a LUT with the structure a profile of lenet5 (ort-cpu, 1 thread, round-to 1) would have
    header = _header(graph, job.example, "ort-cpu", 1, (0.25, 0.5, 0.75), 30, 1, 1)
    header["exporter"] = DEFAULT_EXPORTER
    costs = CostModel(graph)
    points = []
    for g in profiled_groups(graph, 1):
        for p in (0.25, 0.5, 0.75):
            k = kept_for(g, p, 1)
            macs = costs.cost({g.id: k / g.size})[0]
            points.append(EdgePoint(g.id, g.name, g.size, k, p, 1.0, 1.0 - 0.1 * (1 - p), 0.01, costs.total_macs, macs))
    lut = root / "lut.json"
    LUT({k: v for k, v in header.items() if k != "kind"}, points, []).save(lut)

    # the journal `profile-edges --model lenet5` (defaults: points 0.5, repeats 20, round-to 16) would resume
    jheader = _header(graph, job.example, "ort-cpu", 1, (0.5,), 20, 16, 1)
    jheader["exporter"] = DEFAULT_EXPORTER
    records = [jheader]
    for g in profiled_groups(graph, 16):
        k = kept_for(g, 0.5, 16)
        records.append(
            {
                "kind": "edge",
                "group": g.id,
                "name": g.name,
                "size": g.size,
                "kept": k,
                "point": 0.5,
                "pass": 0,
                "baseline_ms": 1.0,
                "latency_ms": 0.9,
                "iqr_ms": 0.01,
                "macs_before": float(costs.total_macs),
                "macs_after": float(costs.cost({g.id: k / g.size})[0]),
                "device": "cpu",
                "versions": {},
            }
        )
    journal = _write(root / "journal.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    onnx = root / "lenet5.onnx"
    export_onnx(job.model, job.example, onnx)

    results = root / "results.csv"
    ResultsStore(results).append(RunRecord(model=MODEL, dataset="none", method="l1", density=0.5))

    blocked = root / "blocked.pt"
    torch.save({"config": argparse_namespace()}, blocked)
    sweep = root / "sweep_blocked.csv"
    ResultsStore(sweep).append(
        RunRecord(
            model=MODEL,
            dataset="digits",
            method="rand",
            mask_kind="weight",
            target_kind="density",
            target_value=2.0,
            density=0.5,
            accuracy_top1=0.5,
            seed=0,
            artifacts=json.dumps({"weights": str(blocked)}),
            extra=json.dumps({"compression_mode": "ratio", "testing_seconds": 0.1}),
        )
    )

    weight_mask = root / "weights.mask.json"
    WeightMask({"conv.weight": np.ones((3, 3), dtype=bool)}, MODEL).save(weight_mask)

    afile = _write(root / "afile", "not a folder")
    folder = root / "folder"
    folder.mkdir()
    readonly = make_readonly(root / "readonly")
    inp = Inputs(root, mask, mask_r20, lut, journal, onnx, results, sweep, weight_mask, afile, folder, readonly)
    _broken_files(inp)
    return inp


def argparse_namespace():
    """An object torch.load(weights_only=True) refuses (a class outside its allow-list)."""
    import argparse

    return argparse.Namespace(a=1)


def _broken_files(i: Inputs) -> None:
    """Broken variants of the valid files, named after what is wrong with them."""
    f = i.file

    def group(d):
        return d["groups"][next(iter(d["groups"]))]

    m = i.mask
    _mutate(m, f("m_oor.json"), lambda d: group(d).update(keep=[1, 2, 99]))
    _mutate(m, f("m_keep_str.json"), lambda d: group(d).update(keep="0,1,2"))
    _mutate(m, f("m_groups_list.json"), lambda d: d.update(groups=list(d["groups"].values())))
    _mutate(m, f("m_gid_str.json"), lambda d: d["groups"].update(x=d["groups"].pop(next(iter(d["groups"])))))
    _mutate(m, f("m_no_size.json"), lambda d: group(d).pop("size"))
    _mutate(m, f("m_neg.json"), lambda d: group(d).update(keep=[-1, 1]))
    _mutate(m, f("m_half.json"), lambda d: group(d).update(keep=[0.5, 1]))
    _mutate(m, f("m_1_7.json"), lambda d: group(d).update(keep=[1.7, 2]))
    _mutate(m, f("m_dup.json"), lambda d: group(d).update(keep=[1, 1]))
    _mutate(m, f("m_bool.json"), lambda d: group(d).update(keep=[True]))
    _mutate(m, f("m_size0.json"), lambda d: group(d).update(size=0, keep=[]))
    _mutate(m, f("m_extra.json"), lambda d: d.update(comment="hand-edited"))
    _mutate(m, f("m_format.json"), lambda d: d.update(format="hwprune.lut/1"))
    _mutate(m, f("m_ratio_str.json"), lambda d: d["meta"].update(ratio="half"))
    _mutate(m, f("m_nan_size.json"), lambda d: group(d).update(size=float("nan")))
    _mutate(m, f("m_keeps_none.json"), lambda d: group(d).update(keep=[]))
    _write(f("m_trunc.json"), m.read_bytes()[: len(m.read_bytes()) // 2])
    _write(f("m_latin1.json"), m.read_bytes().replace(b'"l1"', b'"l\xe91"'))
    _write(f("m_empty.json"), b"")

    wm = i.weight_mask
    _mutate(wm, f("wm_bits.json"), lambda d: d["tensors"]["conv.weight"].update(bits="zz"))

    lut = i.lut
    _mutate(lut, f("l_nan.json"), lambda d: d["points"][0].update(latency_ms=float("nan")))
    _mutate(lut, f("l_no_kept.json"), lambda d: d["points"][0].pop("kept"))
    _mutate(lut, f("l_no_points.json"), lambda d: d.update(points=[]))
    _mutate(lut, f("l_no_backend.json"), lambda d: d["meta"].pop("backend"))
    _mutate(lut, f("l_kept_big.json"), lambda d: d["points"][0].update(kept=10_000))
    _mutate(lut, f("l_inf.json"), lambda d: d["points"][1].update(baseline_ms=float("inf")))
    _mutate(lut, f("l_extra.json"), lambda d: d["points"][0].update(note="x"))
    _write(f("l_trunc.json"), lut.read_bytes()[:100])

    lines = i.journal.read_text().splitlines()

    def journal(name, edit):
        recs = [json.loads(x) for x in lines]
        edit(recs)
        _write(f(name), "".join(json.dumps(r) + "\n" for r in recs))

    _write(f("j_bad_line.jsonl"), "\n".join([lines[0], lines[1][:20], *lines[2:]]) + "\n")
    journal("j_nan.jsonl", lambda r: r[1].update(latency_ms=float("nan")))
    journal("j_no_group.jsonl", lambda r: r[1].pop("group"))
    journal("j_repeats.jsonl", lambda r: r[0].update(repeats=5))
    journal("j_points.jsonl", lambda r: r[0].update(points=[0.25, 0.75]))
    journal("j_model.jsonl", lambda r: r[0].update(fingerprint="0123456789abcdef"))
    journal("j_no_header.jsonl", lambda r: r.pop(0))
    journal("j_header_extra.jsonl", lambda r: r[0].update(warmup=3))
    journal("j_kind.jsonl", lambda r: r[1].update(kind="measure"))
    journal("j_old.jsonl", lambda r: r[0].pop("repeats"))

    _write(f("c_bad.yaml"), "model: [lenet5\n")
    _write(f("c_bad.json"), '{"model": ')
    _write(f("c_type.yaml"), f"model: {MODEL}\nratio: abc\n")
    _write(f("c_list.yaml"), f"model: {MODEL}\nratio: [0.1, 0.2]\n")
    _write(f("c_null.yaml"), f"model: {MODEL}\nratio: null\n")
    _write(f("c_model12.yaml"), "model: 12\n")
    _write(f("c.toml"), f'model = "{MODEL}"\n')
    _write(f("c_choice.yaml"), f"model: {MODEL}\nmethod: l7\n")
    _write(f("c_seq.yaml"), "- model\n- lenet5\n")
    _write(f("c_unknown.json"), {"model": MODEL, "ratioo": 0.5})
    _write(f("c_switch.json"), {"model": MODEL, "latency": "yes"})
    _write(f("c_threads.json"), {"model": MODEL, "threads": 1.5})
    _write(f("c_budget.json"), {"model": MODEL, "flops": 0.5})
    _write(f("c_latin1.yaml"), b"model: l\xe9net5\n")

    with open(i.results, newline="") as fh:
        rows = list(csv.reader(fh))
    bad_utf8 = i.results.read_bytes() + b"\xff\xfe,broken\n"
    _write(f("r_utf8.csv"), bad_utf8)
    rows[1][rows[0].index("density")] = "dense"
    with open(f("r_cell.csv"), "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    _write(f("r_schema.csv"), "model,accuracy\nlenet5,0.9\n")

    import onnx

    model = onnx.load(str(i.onnx))
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[0].attribute.append(onnx.helper.make_attribute("bogus_attr", 3))
    onnx.save(bad, str(f("invalid.onnx")))
    dyn = onnx.ModelProto()
    dyn.CopyFrom(model)
    for d in dyn.graph.input[0].type.tensor_type.shape.dim[2:]:
        d.Clear()
        d.dim_param = "side"
    onnx.save(dyn, str(f("dynamic.onnx")))
    _write(f("garbage.onnx"), b"\x08\x07garbage" * 10)


@dataclass
class Case:
    """A command line (from the inputs and an empty work folder), its exit status and a phrase of its error."""

    id: str
    argv: Callable[[Inputs, Path], list[str]]
    needle: str
    code: int = 2
    writes: tuple[str, ...] = ()  # for a success: the files (relative to the work folder) it must create


def _m(*extra):
    return ["--model", MODEL, *extra]


def C(case_id, argv, needle, code=2, writes=()):  # noqa: N802 (a table row)
    return Case(case_id, argv, needle, code, writes)


def export_mask(name):
    return lambda i, w: ["export", *_m(), "--mask", str(i.file(name)), "--out", str(w / "x.onnx")]


def prune_lut(name, *extra):
    return lambda i, w: [
        "prune",
        *_m(),
        "--latency",
        "0.8",
        "--round-to",
        "1",
        "--lut",
        str(i.file(name)),
        "--out",
        str(w / "p"),
        *extra,
    ]


def profile_journal(name, *extra):
    return lambda i, w: ["profile-edges", *_m(), "--out", str(w / "lut.json"), "--journal", str(i.file(name)), *extra]


def mask_config(name):
    return lambda i, w: ["mask", "--config", str(i.file(name)), "--out", str(w / "m.json")]


CASES: list[Case] = [
    # ---- mask files (export --mask): tracebacks and silent acceptance before
    C("mask_index_out_of_range", export_mask("m_oor.json"), "outside the group's channels"),
    C("mask_keep_is_string", export_mask("m_keep_str.json"), "keep must be a list"),
    C("mask_groups_is_list", export_mask("m_groups_list.json"), "groups must be a mapping"),
    C("mask_group_id_not_numeric", export_mask("m_gid_str.json"), "is not a group id"),
    C("mask_group_without_size", export_mask("m_no_size.json"), "lacks the field 'size'"),
    C("mask_index_minus_one", export_mask("m_neg.json"), "is -1, outside"),
    C("mask_index_0_5", export_mask("m_half.json"), "is 0.5, not a whole-number channel index"),
    C("mask_index_1_7", export_mask("m_1_7.json"), "is 1.7, not a whole-number channel index"),
    C("mask_index_twice", export_mask("m_dup.json"), "twice"),
    C("mask_index_boolean", export_mask("m_bool.json"), "not a whole-number channel index"),
    C("mask_group_size_zero", export_mask("m_size0.json"), "size is 0, below 1"),
    C("mask_unknown_field", export_mask("m_extra.json"), "unknown field 'comment'"),
    C("mask_other_format", export_mask("m_format.json"), "is not a hwprune.channel_mask/1 file"),
    C("mask_meta_ratio_string", export_mask("m_ratio_str.json"), "meta.ratio must be a number"),
    C("mask_size_nan", export_mask("m_nan_size.json"), "size must be a whole number"),
    C("mask_keeps_no_channel", export_mask("m_keeps_none.json"), "keeps no channel"),
    C("mask_truncated", export_mask("m_trunc.json"), "is not valid JSON"),
    C("mask_not_utf8", export_mask("m_latin1.json"), "is not UTF-8 text"),
    C("mask_empty_file", export_mask("m_empty.json"), "is not valid JSON"),
    C("mask_missing", export_mask("nothing.json"), "does not exist"),
    C(
        "mask_is_folder",
        lambda i, w: ["export", *_m(), "--mask", str(i.folder), "--out", str(w / "x.onnx")],
        "is a folder",
    ),
    C(
        "mask_for_another_model",
        lambda i, w: ["export", *_m(), "--mask", str(i.mask_r20_32), "--out", str(w / "x.onnx")],
        "mask was made for resnet20",
    ),
    C(
        "train_mask_out_of_range",
        lambda i, w: ["train", *_m(), "--image-size", "28", "--mask", str(i.file("m_oor.json"))],
        "outside the group's channels",
    ),
    C(
        "train_weight_mask_bad_bits",
        lambda i, w: ["train", *_m(), "--image-size", "28", "--mask", str(i.file("wm_bits.json"))],
        "bits is not",
    ),
    # ---- config files
    C("config_invalid_yaml", mask_config("c_bad.yaml"), "is not valid YAML"),
    C("config_invalid_json", mask_config("c_bad.json"), "is not valid JSON"),
    C("config_wrong_type", mask_config("c_type.yaml"), "option ratio must be a number"),
    C("config_list_value", mask_config("c_list.yaml"), "takes one value, not a list"),
    C("config_null_value", mask_config("c_null.yaml"), "option ratio is null"),
    C("config_model_is_number", mask_config("c_model12.yaml"), "unknown model '12'"),
    C("config_toml", mask_config("c.toml"), ".toml files are not read"),
    C("config_bad_choice", mask_config("c_choice.yaml"), "option method is 'l7'"),
    C("config_not_a_mapping", mask_config("c_seq.yaml"), "must be a mapping"),
    C("config_unknown_option", mask_config("c_unknown.json"), "unknown option(s) ratioo"),
    C("config_missing", mask_config("nothing.yaml"), "does not exist"),
    C("config_not_utf8", mask_config("c_latin1.yaml"), "is not UTF-8 text"),
    C(
        "config_switch_not_boolean",
        lambda i, w: ["export", "--config", str(i.file("c_switch.json")), "--out", str(w / "x.onnx")],
        "is a switch",
    ),
    C(
        "config_threads_fraction",
        lambda i, w: ["export", "--config", str(i.file("c_threads.json")), "--out", str(w / "x.onnx")],
        "must be a whole number",
    ),
    C(
        "config_and_cli_two_budgets",
        lambda i, w: ["prune", "--config", str(i.file("c_budget.json")), "--params", "0.5", "--out", str(w / "p")],
        "takes one budget",
    ),
    # ---- output paths: refused before any work, nothing created
    C(
        "prune_out_unwritable",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--out", str(i.readonly / "p")],
        "cannot write",
    ),
    C(
        "prune_out_under_a_file",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--out", str(i.afile / "p")],
        "is a file, not a folder",
    ),
    C(
        "prune_out_is_a_file",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--out", str(i.afile)],
        "is a file, not a folder",
    ),
    C(
        "prune_results_unwritable",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--out", str(w / "p"), "--results", str(i.readonly / "r.csv")],
        "cannot write",
    ),
    C(
        "prune_results_other_schema",
        lambda i, w: [
            "prune",
            *_m(),
            "--flops",
            "0.5",
            "--out",
            str(w / "p"),
            "--results",
            str(i.file("r_schema.csv")),
        ],
        "another schema version",
    ),
    C("demo_out_unwritable", lambda i, w: ["demo", *_m(), "--out", str(i.readonly / "d")], "cannot write"),
    C("demo_out_under_a_file", lambda i, w: ["demo", *_m(), "--out", str(i.afile / "d")], "is a file, not a folder"),
    C("mask_out_missing_folder", lambda i, w: ["mask", *_m(), "--out", str(w / "no" / "m.json")], "folder"),
    C("mask_out_is_a_folder", lambda i, w: ["mask", *_m(), "--out", str(i.folder)], "is a directory"),
    C(
        "mask_out_under_a_file",
        lambda i, w: ["mask", *_m(), "--out", str(i.afile / "m.json")],
        "is a file, not a folder",
    ),
    C("mask_out_unwritable", lambda i, w: ["mask", *_m(), "--out", str(i.readonly / "m.json")], "cannot write"),
    C(
        "map_json_under_a_file",
        lambda i, w: ["map", *_m(), "--json", str(i.afile / "g.json")],
        "is a file, not a folder",
    ),
    C(
        "export_results_unwritable",
        lambda i, w: ["export", *_m(), "--out", str(w / "x.onnx"), "--results", str(i.readonly / "r.csv")],
        "cannot write",
    ),
    C(
        "export_results_is_a_folder",
        lambda i, w: ["export", *_m(), "--out", str(w / "x.onnx"), "--results", str(i.folder)],
        "is a directory",
    ),
    C(
        "profile_out_unwritable",
        lambda i, w: ["profile-edges", *_m(), "--out", str(i.readonly / "lut.json")],
        "cannot write",
    ),
    C("profile_out_csv", lambda i, w: ["profile-edges", *_m(), "--out", str(w / "lut.csv")], "give a .json name"),
    C(
        "train_checkpoint_dir_unwritable",
        lambda i, w: ["train", *_m(), "--image-size", "28", "--checkpoint-dir", str(i.readonly / "ck")],
        "cannot write",
    ),
    C(
        "train_checkpoint_dir_under_a_file",
        lambda i, w: ["train", *_m(), "--image-size", "28", "--checkpoint-dir", str(i.afile / "ck")],
        "is a file, not a folder",
    ),
    C(
        "train_log_dir_under_a_file",
        lambda i, w: ["train", *_m(), "--image-size", "28", "--log-dir", str(i.afile / "log")],
        "is a file, not a folder",
    ),
    C(
        "train_result_under_a_file",
        lambda i, w: ["train", *_m(), "--image-size", "28", "--result", str(i.afile / "r.json")],
        "is a file, not a folder",
    ),
    C(
        "train_save_mask_unwritable",
        lambda i, w: [
            "train",
            *_m(),
            "--image-size",
            "28",
            "--mask",
            str(i.mask),
            "--save-mask",
            str(i.readonly / "s.json"),
        ],
        "cannot write",
    ),
    C("train_data_dir_missing", lambda i, w: ["train", *_m(), "--data-dir", str(w / "data")], "does not exist"),
    C(
        "prune_at_init_results_unwritable",
        lambda i, w: ["prune-at-init", "--results", str(i.readonly / "r.csv"), "--out", str(w / "s")],
        "cannot write",
    ),
    C(
        "prune_at_init_out_under_a_file",
        lambda i, w: ["prune-at-init", "--results", str(w / "r.csv"), "--out", str(i.afile / "s")],
        "is a file, not a folder",
    ),
    C(
        "compare_out_under_a_file",
        lambda i, w: ["compare", "--results", str(i.results), "--out", str(i.afile / "c")],
        "is a file, not a folder",
    ),
    C(
        "compare_results_missing",
        lambda i, w: ["compare", "--results", str(w / "r.csv"), "--out", str(w / "c")],
        "does not exist",
    ),
    C("results_path_missing", lambda i, w: ["results", "--path", str(w / "r.csv")], "does not exist"),
    C("results_path_is_a_folder", lambda i, w: ["results", "--path", str(i.folder)], "is a folder"),
    # ---- LUTs
    C("lut_nan_value", prune_lut("l_nan.json"), "latency_ms is nan"),
    C("lut_missing_key", prune_lut("l_no_kept.json"), "lacks the field 'kept'"),
    C("lut_no_points", prune_lut("l_no_points.json"), "points is empty"),
    C("lut_meta_without_backend", prune_lut("l_no_backend.json"), "meta lacks the field 'backend'"),
    C("lut_kept_above_size", prune_lut("l_kept_big.json"), "more than the group's"),
    C("lut_infinite_baseline", prune_lut("l_inf.json"), "baseline_ms is inf"),
    C("lut_unknown_point_field", prune_lut("l_extra.json"), "unknown field 'note'"),
    C("lut_truncated", prune_lut("l_trunc.json"), "is not valid JSON"),
    C("lut_other_threads", prune_lut("lut.json", "--threads", "2"), "measured with threads 1, not 2"),
    C("lut_missing_no_create", prune_lut("nothing.json"), "--lut-create"),
    C(
        "lut_create_in_missing_folder",
        lambda i, w: [
            "prune",
            *_m(),
            "--latency",
            "0.5",
            "--lut",
            str(w / "no" / "lut.json"),
            "--lut-create",
            "--out",
            str(w / "p"),
        ],
        "does not exist; create it",
    ),
    C(
        "lut_with_flops_budget",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--lut", str(i.lut), "--out", str(w / "p")],
        "--lut is for --latency",
    ),
    C(
        "latency_validate_lut_nan",
        lambda i, w: ["latency", "validate", *_m(), "--lut", str(i.file("l_nan.json"))],
        "latency_ms is nan",
    ),
    C(
        "latency_validate_lut_missing",
        lambda i, w: ["latency", "validate", *_m(), "--lut", str(w / "l.json")],
        "does not exist",
    ),
    # ---- profiler journals (resume)
    C("journal_damaged_middle_line", profile_journal("j_bad_line.jsonl"), "line 2 is not valid JSON"),
    C("journal_nan_measurement", profile_journal("j_nan.jsonl"), "latency_ms is nan"),
    C("journal_record_without_group", profile_journal("j_no_group.jsonl"), "lacks the field 'group'"),
    C("journal_other_repeats", profile_journal("j_repeats.jsonl"), "rerun with --repeats 5"),
    C("journal_other_points", profile_journal("j_points.jsonl"), "rerun with --points 0.25,0.75"),
    C("journal_other_model", profile_journal("j_model.jsonl"), "belongs to another run"),
    C("journal_without_header", profile_journal("j_no_header.jsonl"), "is not the journal's header"),
    C("journal_unknown_setting", profile_journal("j_header_extra.jsonl"), "unknown field 'warmup'"),
    C("journal_unknown_kind", profile_journal("j_kind.jsonl"), "has kind 'measure'"),
    C("journal_from_older_version", profile_journal("j_old.jsonl"), "does not record its repeats"),
    # ---- numbers: checked before any work
    C("demo_repeats_zero", lambda i, w: ["demo", *_m(), "--repeats", "0", "--out", str(w / "d")], "--repeats must be"),
    C("demo_threads_zero", lambda i, w: ["demo", *_m(), "--threads", "0", "--out", str(w / "d")], "--threads must be"),
    C(
        "export_threads_negative",
        lambda i, w: ["export", *_m(), "--threads", "-1", "--out", str(w / "x.onnx")],
        "--threads must be",
    ),
    C(
        "prune_at_init_threads_zero",
        lambda i, w: ["prune-at-init", "--threads", "0", "--results", str(w / "r.csv"), "--out", str(w / "s")],
        "--threads must be",
    ),
    C(
        "prune_at_init_threads_negative",
        lambda i, w: ["prune-at-init", "--threads", "-1", "--results", str(w / "r.csv"), "--out", str(w / "s")],
        "--threads must be",
    ),
    C(
        "profile_repeats_zero",
        lambda i, w: ["profile-edges", *_m(), "--repeats", "0", "--out", str(w / "l.json")],
        "--repeats must be",
    ),
    C(
        "profile_passes_zero",
        lambda i, w: ["profile-edges", *_m(), "--passes", "0", "--out", str(w / "l.json")],
        "--passes must be",
    ),
    C(
        "profile_points_out_of_range",
        lambda i, w: ["profile-edges", *_m(), "--points", "0.5,1", "--out", str(w / "l.json")],
        "strictly between 0 and 1",
    ),
    C(
        "profile_points_not_numbers",
        lambda i, w: ["profile-edges", *_m(), "--points", "half", "--out", str(w / "l.json")],
        "strictly between 0 and 1",
    ),
    C(
        "mask_input_size_zero",
        lambda i, w: ["mask", *_m(), "--input-size", "0", "--out", str(w / "m.json")],
        "--input-size must be",
    ),
    C("flops_batch_zero", lambda i, w: ["flops", *_m(), "--batch", "0"], "--batch must be"),
    C("flops_top_zero", lambda i, w: ["flops", *_m(), "--top", "0"], "--top must be"),
    C("mask_ratio_one", lambda i, w: ["mask", *_m(), "--ratio", "1", "--out", str(w / "m.json")], "--ratio must be"),
    C(
        "mask_imp_samples_zero",
        lambda i, w: ["mask", *_m(), "--imp-samples", "0", "--out", str(w / "m.json")],
        "--imp-samples must be",
    ),
    C("prune_latency_zero", lambda i, w: ["prune", *_m(), "--latency", "0", "--out", str(w / "p")], "in (0, 1]"),
    C("prune_latency_negative", lambda i, w: ["prune", *_m(), "--latency", "-0.5", "--out", str(w / "p")], "in (0, 1]"),
    C("prune_latency_above_one", lambda i, w: ["prune", *_m(), "--latency", "1.5", "--out", str(w / "p")], "in (0, 1]"),
    C("prune_latency_nan", lambda i, w: ["prune", *_m(), "--latency", "nan", "--out", str(w / "p")], "in (0, 1]"),
    C("prune_params_inf", lambda i, w: ["prune", *_m(), "--params", "inf", "--out", str(w / "p")], "in (0, 1]"),
    C(
        "prune_tolerance_nan",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--tolerance", "nan", "--out", str(w / "p")],
        "--tolerance must be",
    ),
    C(
        "prune_round_to_zero",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--round-to", "0", "--out", str(w / "p")],
        "--round-to must be",
    ),
    C(
        "prune_repeats_zero",
        lambda i, w: ["prune", *_m(), "--latency", "0.5", "--repeats", "0", "--out", str(w / "p")],
        "--repeats must be",
    ),
    C(
        "prune_sessions_zero",
        lambda i, w: ["prune", *_m(), "--latency", "0.5", "--sessions", "0", "--out", str(w / "p")],
        "--sessions must be",
    ),
    C(
        "prune_flops_unreachable",
        lambda i, w: ["prune", *_m(), "--flops", "0.01", "--out", str(w / "p")],
        "best reachable ratio",
    ),
    C(
        "prune_params_unreachable",
        lambda i, w: ["prune", *_m(), "--params", "0.001", "--out", str(w / "p")],
        "best reachable ratio",
    ),
    C(
        "latency_masks_zero",
        lambda i, w: ["latency", "validate", *_m(), "--lut", str(i.lut), "--masks", "0"],
        "--masks must be",
    ),
    C("results_last_zero", lambda i, w: ["results", "--path", str(i.results), "--last", "0"], "--last must be"),
    C(
        "map_onnx_shape_with_zero",
        lambda i, w: ["map", "--onnx", str(i.onnx), "--input-shape", "1,1,0,28"],
        "positive sizes",
    ),
    C("train_lr_nan", lambda i, w: ["train", *_m(), "--image-size", "28", "--lr", "nan"], "lr must be a finite number"),
    C("train_image_size_zero", lambda i, w: ["train", *_m(), "--image-size", "0"], "--image-size must be"),
    C("train_channels_two", lambda i, w: ["train", *_m(), "--channels", "2"], "--channels must be 1 or 3"),
    C(
        "prune_at_init_image_size_zero",
        lambda i, w: ["prune-at-init", "--image-size", "0", "--results", str(w / "r.csv"), "--out", str(w / "s")],
        "--image-size must be",
    ),
    C(
        "compare_layer_compression_nan",
        lambda i, w: ["compare", "--results", str(i.results), "--layer-compression", "nan", "--out", str(w / "c")],
        "--layer-compression must be",
    ),
    # ---- names
    C(
        "prune_backend_mistyped",
        lambda i, w: ["prune", *_m(), "--latency", "0.5", "--backend", "ort-cpux", "--out", str(w / "p")],
        "unknown latency backend 'ort-cpux'",
    ),
    C(
        "profile_backend_mistyped",
        lambda i, w: ["profile-edges", *_m(), "--backend", "ort-cpux", "--out", str(w / "l.json")],
        "unknown latency backend",
    ),
    C(
        "model_mistyped",
        lambda i, w: ["mask", "--model", "lenet55", "--out", str(w / "m.json")],
        "unknown model 'lenet55'",
    ),
    C(
        "dataset_mistyped",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--data", "digitz", "--out", str(w / "p")],
        "digitz",
    ),
    C(
        "importance_needs_data",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--importance", "taylor", "--out", str(w / "p")],
        "needs data",
    ),
    C(
        "finetune_needs_data",
        lambda i, w: ["prune", *_m(), "--flops", "0.5", "--finetune-epochs", "1", "--out", str(w / "p")],
        "needs --data",
    ),
    C(
        "data_dir_missing",
        lambda i, w: [
            "prune",
            *_m(),
            "--flops",
            "0.5",
            "--data",
            "digits",
            "--data-dir",
            str(w / "d"),
            "--out",
            str(w / "p"),
        ],
        "--data-dir",
    ),
    C("train_dataset_mistyped", lambda i, w: ["train", *_m(), "--dataset", "cifar11"], "cifar11"),
    # ---- ONNX files
    C("onnx_invalid_map", lambda i, w: ["map", "--onnx", str(i.file("invalid.onnx"))], "is not a valid ONNX model"),
    C(
        "onnx_invalid_export",
        lambda i, w: ["export", "--onnx", str(i.file("invalid.onnx")), "--out", str(w / "x.onnx")],
        "is not a valid ONNX model",
    ),
    C(
        "onnx_dynamic_needs_input_shape",
        lambda i, w: ["map", "--onnx", str(i.file("dynamic.onnx"))],
        "give --input-shape",
    ),
    C("onnx_garbage", lambda i, w: ["map", "--onnx", str(i.file("garbage.onnx"))], "is not an ONNX model"),
    C("onnx_missing", lambda i, w: ["map", "--onnx", str(w / "m.onnx")], "does not exist"),
    C("onnx_is_a_folder", lambda i, w: ["map", "--onnx", str(i.folder)], "is a folder"),
    C(
        "onnx_out_is_its_input",
        lambda i, w: ["export", "--onnx", str(i.onnx), "--out", str(i.onnx)],
        "is the --onnx input itself",
    ),
    C(
        "onnx_with_results",
        lambda i, w: ["export", "--onnx", str(i.onnx), "--out", str(w / "x.onnx"), "--results", str(w / "r.csv")],
        "--results needs --model",
    ),
    C("onnx_and_model", lambda i, w: ["map", "--onnx", str(i.onnx), *_m()], "not both"),
    C(
        "input_shape_with_model",
        lambda i, w: ["map", *_m(), "--input-shape", "1,1,28,28"],
        "--input-shape is for --onnx",
    ),
    C(
        "onnx_with_gradient_importance",
        lambda i, w: ["mask", "--onnx", str(i.onnx), "--method", "taylor", "--out", str(w / "m.json")],
        "needs a PyTorch model",
    ),
    # ---- command lines argparse refuses: one line too
    C("unknown_option", lambda i, w: ["map", *_m(), "--bogus"], "unrecognized arguments: --bogus"),
    C("not_an_int", lambda i, w: ["demo", *_m(), "--threads", "two"], "invalid int value: 'two'"),
    C("no_command", lambda i, w: [], "required"),
    C("unknown_command", lambda i, w: ["prnue"], "invalid choice: 'prnue'"),
    C("missing_required_out", lambda i, w: ["mask", *_m()], "needs --out"),
    C("compare_unknown_option", lambda i, w: ["compare", "--bogus"], "unrecognized arguments"),
    C("train_not_an_int", lambda i, w: ["train", *_m(), "--epochs", "x"], "invalid int value"),
    C("prune_at_init_bad_list", lambda i, w: ["prune-at-init", "--seeds", "a,b"], "comma-separated list"),
    # ---- results files
    C("results_not_utf8", lambda i, w: ["results", "--path", str(i.file("r_utf8.csv"))], "is not UTF-8 text"),
    C("results_bad_cell", lambda i, w: ["results", "--path", str(i.file("r_cell.csv"))], "row 2"),
    C(
        "results_other_schema",
        lambda i, w: ["results", "--path", str(i.file("r_schema.csv"))],
        "another schema version",
    ),
    C(
        "compare_results_not_utf8",
        lambda i, w: ["compare", "--results", str(i.file("r_utf8.csv")), "--out", str(w / "c")],
        "is not UTF-8 text",
    ),
    C(
        "compare_blocked_weights",
        lambda i, w: ["compare", "--results", str(i.sweep_blocked), "--out", str(w / "c")],
        "holds objects other than tensors",
    ),
    # ---- success where success is right
    C("mask_ok", lambda i, w: ["mask", *_m(), "--out", str(w / "m.json")], "", 0, ("m.json",)),
    C(
        "mask_made_at_32px_fits_64px",  # the same group structure: accepted, as the README says since #11
        lambda i, w: [
            "export",
            "--model",
            "resnet20",
            "--input-size",
            "64",
            "--mask",
            str(i.mask_r20_32),
            "--out",
            str(w / "x.onnx"),
        ],
        "",
        0,
        ("x.onnx",),
    ),
    C("models_list", lambda i, w: ["models"], "", 0),
    C("results_table", lambda i, w: ["results", "--path", str(i.results)], "", 0),
]


def command_of(argv: list[str]) -> str:
    """The subcommand of a command line (``latency validate`` with its action; ``hwprune`` when there is none)."""
    from hwprune.cli import COMMANDS, DELEGATED

    if not argv or (argv[0] not in COMMANDS and argv[0] not in DELEGATED):
        return "hwprune"
    return " ".join(argv[:2]) if argv[0] == "latency" else argv[0]


# ----------------------------------------------------------------------------- judging a run


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too) with a hash of each file's bytes."""
    out: dict[str, str] = {}
    if not root.exists() or str(root).startswith("/proc"):
        return out
    for dirpath, _dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        out[rel + "/"] = "dir"
        for name in filenames:
            path = Path(dirpath) / name
            try:
                out[os.path.join(rel, name)] = hashlib.sha1(path.read_bytes()).hexdigest()
            except OSError:
                out[os.path.join(rel, name)] = "unreadable"
    return out


def one_line(stderr: str) -> list[str]:
    """The non-empty lines of stderr."""
    return [ln for ln in stderr.splitlines() if ln.strip()]


def judge(case: Case, code: int, stderr: str, before: dict, after: dict, work: Path) -> dict:
    """Whether a run did what its case demands: exit status, one stderr line with the phrase, folders."""
    lines = one_line(stderr)
    if case.code == 0:
        created = {k for k in after if k not in before and not k.endswith("/")}
        expected = {os.path.join(".", f) for f in case.writes}
        unchanged = created == expected
        line_ok = not lines or all("note:" in ln for ln in lines)
    else:
        unchanged = before == after
        line_ok = len(lines) == 1 and case.needle in lines[0] and "error" in lines[0]
    return {
        "exit_ok": code == case.code,
        "one_line": line_ok,
        "output_unchanged": unchanged,
        "lines": lines,
    }


__all__ = [
    "CASES",
    "Case",
    "Inputs",
    "command_of",
    "judge",
    "make_inputs",
    "release_readonly",
    "snapshot",
]
