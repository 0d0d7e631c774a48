"""Bad input and faults (issue #11): one line, exit 2, checked before any work, nothing half written, resumable.

The table (``tests/bad_input_cases.py``) runs in-process through ``hwprune.cli.main``; a few cases
run through the installed ``hwprune`` entry point; hypothesis corrupts valid mask, LUT, config and
journal files and every corruption must be one line and exit 2. Profiles are faked (no timing).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwprune.cli import main
from hwprune.errors import HwpruneError
from tests.bad_input_cases import CASES, MODEL, command_of, judge, make_inputs, release_readonly, snapshot

BY_ID = {c.id: c for c in CASES}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    inp = make_inputs(tmp_path_factory.mktemp("inputs"))
    yield inp
    release_readonly(inp.readonly)


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_table_covers_every_command(inputs, tmp_path):
    assert len(CASES) >= 60
    assert len(BY_ID) == len(CASES), "case ids must be unique"
    commands = {command_of(c.argv(inputs, tmp_path)) for c in CASES}
    expected = {
        "demo", "map", "mask", "export", "prune", "profile-edges", "latency validate", "flops", "results", "models",
        "prune-at-init", "compare", "train",
    }  # fmt: skip
    assert expected <= commands, expected - commands


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_leaves_everything_as_it_was(case, inputs, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # default paths (runs/results.csv, out/...) land in the work folder
    before, inputs_before = snapshot(work), snapshot(inputs.root)
    code, _, err = run_main(case.argv(inputs, work))
    verdict = judge(case, code, err, before, snapshot(work), work)
    assert code == case.code, err
    assert verdict["one_line"], f"stderr was: {err!r}"
    if case.code:
        assert verdict["lines"][0].startswith("hwprune"), verdict["lines"]
    assert verdict["output_unchanged"], (before, snapshot(work))
    assert snapshot(inputs.root) == inputs_before, "an input file or folder was changed"


ENTRY_POINT_CASES = [
    "mask_index_out_of_range",
    "config_toml",
    "compare_blocked_weights",
    "unknown_command",
    "train_checkpoint_dir_under_a_file",
    "prune_backend_mistyped",
]


@pytest.mark.parametrize("case_id", ENTRY_POINT_CASES)
def test_installed_entry_point(case_id, inputs, tmp_path):
    exe = shutil.which("hwprune", path=str(Path(sys.executable).parent)) or shutil.which("hwprune")
    assert exe, "the hwprune entry point is not installed"
    case = BY_ID[case_id]
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(work)
    proc = subprocess.run(
        [exe, *case.argv(inputs, work)],
        capture_output=True,
        text=True,
        cwd=work,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    verdict = judge(case, proc.returncode, proc.stderr, before, snapshot(work), work)
    assert proc.returncode == case.code, proc.stderr
    assert verdict["one_line"] and verdict["output_unchanged"], proc.stderr
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- random corruption

SWAPS = ["not-a-value", 7, True, None, [1, "a"], {"x": 1}]  # one of each JSON type class


def _kind(v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return type(v).__name__


def _nodes(doc, path=()):
    """Every (path, value) in a JSON document."""
    yield path, doc
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _nodes(v, (*path, i))


def _get(doc, path):
    for p in path:
        doc = doc[p]
    return doc


def _set(doc, path, value):
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


@st.composite
def corrupted(draw, doc: dict, strict: list, required: list, skip=lambda path: False):
    """``doc`` with one corruption: a type swap, a NaN, an extra key in a strict mapping, a required key dropped.

    ``strict``/``required`` are predicates on paths: mappings that refuse unknown keys, and (mapping path,
    key) pairs a valid file must have. Every corruption drawn here makes the file invalid.
    """
    doc = json.loads(json.dumps(doc))
    nodes = [(p, v) for p, v in _nodes(doc) if not skip(p)]
    numbers = [(p, v) for p, v in nodes if _kind(v) == "number"]
    mappings = [p for p, v in nodes if isinstance(v, dict) and strict(p)]
    pairs = [(p, k) for p, v in nodes if isinstance(v, dict) for k in v if required(p, k)]
    kinds = ["swap"] + ["nan"] * bool(numbers) + ["extra"] * bool(mappings) + ["drop"] * bool(pairs)
    how = draw(st.sampled_from(kinds))
    if how == "swap":
        path, value = draw(st.sampled_from(nodes))
        new = draw(st.sampled_from([s for s in SWAPS if _kind(s) != _kind(value)]))
        return _set(doc, path, json.loads(json.dumps(new))), f"swap {path}"
    if how == "nan":
        path, _ = draw(st.sampled_from(numbers))
        return _set(doc, path, draw(st.sampled_from([math.nan, math.inf, -math.inf]))), f"nan {path}"
    if how == "extra":
        path = draw(st.sampled_from(mappings))
        _get(doc, path)["zz_" + draw(st.text("abcdefgh", min_size=1, max_size=6))] = 1
        return doc, f"extra {path}"
    path, key = draw(st.sampled_from(pairs))
    del _get(doc, path)[key]
    return doc, f"drop {path}.{key}"


def _assert_refused(argv: list[str], what: str) -> None:
    code, _, err = run_main(argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("hwprune: error:"), (what, code, err)


# fixed examples in CI; HWPRUNE_CORRUPT_EXAMPLES=500 searches afresh (random seed) for more
EXAMPLES = int(os.environ.get("HWPRUNE_CORRUPT_EXAMPLES", "60"))
CORRUPT = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize="HWPRUNE_CORRUPT_EXAMPLES" not in os.environ,
    database=None,
)


@CORRUPT
@given(data=st.data())
def test_corrupted_mask_files_are_refused(inputs, tmp_path_factory, data):
    doc = json.loads(inputs.mask.read_text())
    bad, what = data.draw(
        corrupted(
            doc,
            strict=lambda p: p == () or (len(p) == 2 and p[0] == "groups"),
            required=lambda p, k: (p == () and k in ("format", "groups")) or (len(p) == 2 and p[0] == "groups"),
        )
    )
    work = tmp_path_factory.mktemp("mask")
    path = work / "m.json"
    path.write_text(json.dumps(bad))
    _assert_refused(["export", "--model", MODEL, "--mask", str(path), "--out", str(work / "x.onnx")], what)
    assert sorted(p.name for p in work.iterdir()) == ["m.json"]


@CORRUPT
@given(data=st.data(), cut=st.floats(0.0, 0.99))
def test_truncated_files_are_refused(inputs, tmp_path_factory, data, cut):
    which = data.draw(st.sampled_from(["mask", "lut", "config"]))
    work = tmp_path_factory.mktemp("trunc")
    if which == "config":
        raw = json.dumps({"model": MODEL, "ratio": 0.25, "method": "l2"}).encode()
    else:
        raw = getattr(inputs, which).read_bytes()
    path = work / ("c.json" if which == "config" else f"{which}.json")
    path.write_bytes(raw[: int(len(raw.rstrip()) * cut)])
    argv = {
        "mask": ["export", "--model", MODEL, "--mask", str(path), "--out", str(work / "x.onnx")],
        "lut": ["latency", "validate", "--model", MODEL, "--lut", str(path)],
        "config": ["mask", "--config", str(path), "--out", str(work / "m.json")],
    }[which]
    _assert_refused(argv, f"{which} cut at {cut:.2f}")


@CORRUPT
@given(data=st.data())
def test_corrupted_luts_are_refused(inputs, tmp_path_factory, data):
    doc = json.loads(inputs.lut.read_text())
    required_meta = ("model", "fingerprint", "input_shape", "backend", "threads")
    bad, what = data.draw(
        corrupted(
            doc,
            strict=lambda p: p == () or (len(p) == 2 and p[0] in ("points", "calibration")),
            required=lambda p, k: (
                (p == () and k in ("format", "meta", "points"))
                or (p == ("meta",) and k in required_meta)
                or (len(p) == 2 and p[0] == "points" and k != "passes")
            ),
        )
    )
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    path.write_text(json.dumps(bad))
    _assert_refused(["latency", "validate", "--model", MODEL, "--lut", str(path)], what)


@CORRUPT
@given(data=st.data())
def test_corrupted_configs_are_refused(tmp_path_factory, data):
    doc = {"model": MODEL, "ratio": 0.25, "method": "l2", "seed": 3}
    bad, what = data.draw(corrupted(doc, strict=lambda p: p == (), required=lambda p, k: k == "model"))
    work = tmp_path_factory.mktemp("cfg")
    import yaml

    path = work / data.draw(st.sampled_from(["c.json", "c.yaml"]))
    path.write_text(json.dumps(bad) if path.suffix == ".json" else yaml.safe_dump(bad))
    _assert_refused(["mask", "--config", str(path), "--out", str(work / "m.json")], what)
    assert sorted(p.name for p in work.iterdir()) == [path.name]


JOURNAL_CHECKED = {
    "kind",
    "group",
    "name",
    "size",
    "kept",
    "point",
    "pass",
    "baseline_ms",
    "latency_ms",
    "iqr_ms",
    "macs_before",
    "macs_after",
}


@CORRUPT
@given(data=st.data())
def test_corrupted_journals_are_refused(inputs, tmp_path_factory, data):
    records = [json.loads(x) for x in inputs.journal.read_text().splitlines()]
    line = data.draw(st.integers(0, len(records) - 1))
    rec = records[line]
    header = line == 0
    how = data.draw(st.sampled_from(["fields", "torn_middle"])) if line < len(records) - 1 else "fields"
    work = tmp_path_factory.mktemp("journal")
    path = work / "lut.journal.jsonl"
    if how == "torn_middle":  # a cut line that is not the last one is damage, not a torn write
        text = [json.dumps(r) for r in records]
        text[line] = text[line][: data.draw(st.integers(1, len(text[line]) - 1))]
        path.write_text("\n".join(text) + "\n")
        what = f"cut line {line + 1}"
    else:
        bad, what = data.draw(
            corrupted(
                rec,
                strict=lambda p: header and p == (),
                required=lambda p, k: (
                    p == () and (k in (set(rec) - {"passes"}) if header else k in JOURNAL_CHECKED - {"pass"})
                ),
                skip=lambda p: not header and len(p) >= 1 and p[0] not in JOURNAL_CHECKED,
            )
        )
        records[line] = bad
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = path.read_bytes()
    _assert_refused(["profile-edges", "--model", MODEL, "--out", str(work / "lut.json"), "--journal", str(path)], what)
    assert path.read_bytes() == before, "a refused journal must be left byte for byte"
    assert sorted(p.name for p in work.iterdir()) == [path.name]


# ----------------------------------------------------------------------------- interruptions and resume


@pytest.fixture
def fake_timing(monkeypatch):
    """The profiler with made-up timings: no export, no onnxruntime; counts the measurements taken."""
    import hwprune.latency.profiler as profiler

    calls = SimpleNamespace(n=0, stop_after=None)

    def time_mask(graph, mask, baseline, backend, example, threads, repeats, exporter, candidate=None):
        if calls.stop_after is not None and calls.n >= calls.stop_after:
            raise KeyboardInterrupt
        calls.n += 1
        shares = [float(k.mean()) for k in mask.keep.values()] or [1.0]
        m = SimpleNamespace(median_ms=1.0, iqr_ms=0.01, device="fake", versions={})
        return m, m, 1.0 - 0.2 * (1.0 - min(shares))

    monkeypatch.setattr(profiler, "time_mask", time_mask)
    monkeypatch.setattr(profiler, "baseline_for", lambda *a, **k: None)
    return calls


def _profile_argv(work: Path) -> list[str]:
    return [
        "profile-edges",
        "--model",
        MODEL,
        "--round-to",
        "1",
        "--points",
        "0.25,0.5",
        "--calibration-masks",
        "4",
        "--out",
        str(work / "lut.json"),
    ]


def test_interrupted_profile_resumes_measuring_only_the_rest(fake_timing, tmp_path):
    work = tmp_path
    fake_timing.stop_after = 3
    code, _, err = run_main(_profile_argv(work))
    lines = [ln for ln in err.splitlines() if ln.strip() and "%|" not in ln]
    assert code == 130 and len(lines) == 1 and "interrupted" in lines[0] and "rerun" in lines[0], err
    journal = work / "lut.journal.jsonl"
    kept = journal.read_text().splitlines()
    assert len(kept) == 1 + 3 and not (work / "lut.json").exists()  # header + the 3 measurements taken
    total = fake_timing.n
    fake_timing.stop_after = None
    code, out, err = run_main(_profile_argv(work))
    assert code == 0, err
    lut = json.loads((work / "lut.json").read_text())
    measured_again = fake_timing.n - total
    assert measured_again == len(lut["points"]) + len(lut["calibration"]) - 3
    # a different --repeats on the finished journal is refused, naming both values
    code, _, err = run_main([*_profile_argv(work), "--repeats", "7"])
    assert code == 2 and "repeats 20, this run asks for 7" in err and "--repeats 20" in err


def test_torn_last_journal_line_is_dropped_with_one_notice(fake_timing, tmp_path):
    work = tmp_path
    fake_timing.stop_after = 2
    assert run_main(_profile_argv(work))[0] == 130
    journal = work / "lut.journal.jsonl"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"kind": "edge", "group": 1, "na')  # SIGKILL mid-write
    fake_timing.stop_after = None
    taken = fake_timing.n
    code, _, err = run_main(_profile_argv(work))
    notes = [ln for ln in err.splitlines() if "note:" in ln]
    assert code == 0 and len(notes) == 1 and "dropped a torn last line" in notes[0], err
    lines = journal.read_text().splitlines()
    assert all(json.loads(x) for x in lines)  # every line whole again
    lut = json.loads((work / "lut.json").read_text())
    assert fake_timing.n - taken == len(lut["points"]) + len(lut["calibration"]) - 2


def test_mistyped_backend_leaves_no_journal_that_blocks_the_fix(fake_timing, tmp_path):
    argv = ["prune", "--model", MODEL, "--latency", "0.8", "--round-to", "1", "--out", str(tmp_path / "p")]
    code, _, err = run_main([*argv, "--backend", "ort-cpx"])
    assert code == 2 and not (tmp_path / "p").exists(), err
    assert "ort-cpu" in err  # the close match is offered


@pytest.mark.parametrize("measured", [0, 2])
def test_prune_failure_keeps_the_journal_only_when_it_holds_measurements(measured, tmp_path, monkeypatch):
    """A latency prune profiles into OUT/lut.journal.jsonl (where a rerun resumes); a run that fails keeps it
    only when it holds measurements, and leaves no mask, ONNX, staging folder or empty OUT behind."""
    import hwprune.workflow as workflow

    seen = {}

    def fake_prune(job, kind, target, out_dir, lut_path=None, **kw):
        seen.update(out_dir=Path(out_dir), lut=lut_path)
        (Path(out_dir) / "mask.json").write_text("{}")  # staged output, never moved into OUT
        journal = lut_path.with_suffix(".journal.jsonl")
        lines = [{"kind": "header"}] + [{"kind": "edge", "group": g} for g in range(measured)]
        journal.write_text("".join(json.dumps(r) + "\n" for r in lines))
        raise HwpruneError("the backend failed (simulated)")

    monkeypatch.setattr(workflow, "prune_to_budget", fake_prune)
    out = tmp_path / "runs" / "p"
    code, _, err = run_main(["prune", "--model", MODEL, "--latency", "0.7", "--out", str(out)])
    assert code == 2 and "simulated" in err
    assert seen["lut"] == out / "lut.json" and seen["out_dir"].parent == out.parent and seen["out_dir"] != out
    if measured:
        assert sorted(p.name for p in out.iterdir()) == ["lut.journal.jsonl"]
        assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["lut.journal.jsonl"]
    else:
        assert list(tmp_path.iterdir()) == [], "no empty folder, stale journal or staging folder may stay"


def test_prune_without_lut_into_a_fresh_folder_passes_the_checks(tmp_path, monkeypatch):
    import hwprune.workflow as workflow

    def reached(*a, **k):
        raise HwpruneError("reached prune_to_budget")

    monkeypatch.setattr(workflow, "prune_to_budget", reached)
    out = tmp_path / "a" / "b"
    code, _, err = run_main(["prune", "--model", MODEL, "--latency", "0.7", "--out", str(out)])
    assert code == 2 and "reached prune_to_budget" in err  # every check passed
    assert list(tmp_path.iterdir()) == []


def test_failure_mid_run_leaves_the_output_folder_as_it_was(tmp_path, monkeypatch):
    import hwprune.workflow as workflow

    real = workflow.prune_export_measure

    def fails_after_writing(job, mask, graph, onnx_path, *a, **k):
        Path(onnx_path).write_bytes(b"half")  # a file in the staging folder, then a failure
        raise HwpruneError("export failed verification (simulated)")

    monkeypatch.setattr(workflow, "prune_export_measure", fails_after_writing)
    out = tmp_path / "deep" / "demo"
    code, _, err = run_main(["demo", "--model", MODEL, "--out", str(out)])
    assert code == 2 and "simulated" in err
    assert list(tmp_path.iterdir()) == [], "no folder, staging folder or stray file may stay"
    # an existing folder keeps exactly what it had
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert run_main(["demo", "--model", MODEL, "--out", str(out)])[0] == 2
    assert snapshot(tmp_path) == before
    monkeypatch.setattr(workflow, "prune_export_measure", real)


def test_internal_error_is_one_line_naming_the_stage_traceback_with_debug(tmp_path, monkeypatch):
    import hwprune.workflow as workflow

    def bug(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(workflow, "make_mask", bug)
    argv = ["mask", "--model", MODEL, "--out", str(tmp_path / "m.json")]
    code, _, err = run_main(argv)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1, err
    assert "internal error while computing the mask" in lines[0] and "ZeroDivisionError" in lines[0]
    assert "--debug" in lines[0]
    code, _, err = run_main(["--debug", *argv])
    assert code == 1 and "Traceback (most recent call last)" in err and "ZeroDivisionError" in err
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_work_leaves_nothing_half_written(tmp_path, monkeypatch):
    import hwprune.workflow as workflow

    def interrupted(job, mask, graph, onnx_path, *a, **k):
        Path(onnx_path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(workflow, "prune_export_measure", interrupted)
    code, _, err = run_main(["demo", "--model", MODEL, "--out", str(tmp_path / "d")])
    assert code == 130 and len(err.strip().splitlines()) == 1 and "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_flops_budget_below_the_floor_names_the_best_and_what_binds(tmp_path):
    code, _, err = run_main(["prune", "--model", MODEL, "--flops", "0.01", "--out", str(tmp_path / "p")])
    assert code == 2
    line = err.strip()
    best = float(line.split("best reachable ratio is ")[1].split(",")[0])
    assert 0.01 < best < 1 and "bound by" in line
    suggested = float(line.split("give --flops ")[1].split(" ")[0])
    assert suggested >= best
    code, out, err = run_main(
        [
            "prune",
            "--model",
            MODEL,
            "--flops",
            f"{suggested}",
            "--out",
            str(tmp_path / "p"),
            "--results",
            str(tmp_path / "r.csv"),
        ]
    )
    assert code == 0 and "-> met" in out, err  # the suggested budget is reachable
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["lenet5_pruned.onnx", "mask.json"]


# ----------------------------------------------------------------------------- the same checks in the Python API


def test_python_api_refuses_the_same_input(inputs):
    from hwprune.latency.lut import LUT
    from hwprune.prune.masks import ChannelMask
    from hwprune.train import TrainConfig
    from hwprune.workflow import ModelInput, prune_to_budget

    with pytest.raises(HwpruneError, match="outside the group's channels"):
        ChannelMask.load(inputs.file("m_oor.json"))
    with pytest.raises(HwpruneError, match="latency_ms is nan"):
        LUT.load(inputs.file("l_nan.json"))
    with pytest.raises(HwpruneError, match="--input-size must be"):
        ModelInput.build(MODEL, input_size=0)
    job = ModelInput.build(MODEL)
    with pytest.raises(HwpruneError, match=r"in \(0, 1\]"):
        prune_to_budget(job, "latency", 1.5, Path("/nonexistent/never-created"))
    with pytest.raises(HwpruneError, match="--threads must be"):
        prune_to_budget(job, "flops", 0.5, Path("/nonexistent/never-created"), threads=0)
    assert not Path("/nonexistent").exists()
    with pytest.raises(HwpruneError, match="epochs must be a whole number"):
        TrainConfig(epochs="3")
    with pytest.raises(HwpruneError, match="weight_decay must be a finite number"):
        TrainConfig(weight_decay=float("nan"))
