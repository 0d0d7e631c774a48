"""The results schema and the process-safe CSV store."""

from __future__ import annotations

import csv
import dataclasses
import json
import multiprocessing
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwprune.errors import HwpruneError
from hwprune.results import COLUMNS, ResultsStore, RunRecord, current_git_sha

EXPECTED_COLUMNS = [
    "run_id", "time", "git_sha", "model", "dataset", "method", "mask_kind", "target_kind",
    "target_value", "density", "density_whole_model", "compression_ratio", "params", "params_before",
    "flops", "flops_before", "flops_counter", "latency_backend", "latency_ms_median", "latency_ms_iqr",
    "latency_threads", "latency_batch", "latency_before_ms", "accuracy_top1", "accuracy_top5", "seed",
    "notes", "artifacts", "extra",
]  # fmt: skip


def _full_record(**over) -> RunRecord:
    kw = dict(
        git_sha="0123456789abcdef0123456789abcdef01234567",
        model="resnet20",
        dataset="cifar10",
        method="synflow",
        mask_kind="channel",
        target_kind="latency",
        target_value=0.5,
        density=0.25,
        density_whole_model=0.3125,
        params=123_456,
        params_before=270_000,
        flops=10_000_000_000_000,
        flops_before=40_000_000_000_000,
        flops_counter="fvcore",
        latency_backend="ort-cpu",
        latency_ms_median=1.2345678901234567,
        latency_ms_iqr=0.01,
        latency_threads=1,
        latency_batch=8,
        latency_before_ms=2.5,
        accuracy_top1=0.91,
        accuracy_top5=0.995,
        seed=0,
        notes='has, commas "quotes"\nand a newline',
        artifacts={"mask": "runs/a/mask.safetensors", "onnx": "runs/a/model.onnx"},
        extra={"iterations": 100, "schedule": "exponential"},
    )
    kw.update(over)
    return RunRecord(**kw)


# -- schema ------------------------------------------------------------------------------------


def test_columns_are_the_declared_fields():
    assert COLUMNS == [f.name for f in dataclasses.fields(RunRecord)]
    assert COLUMNS == EXPECTED_COLUMNS


def test_defaults_and_derived_fields():
    r = RunRecord(model="m", dataset="d", method="x", density=0.2)
    assert len(r.run_id) == 12 and int(r.run_id, 16) >= 0
    assert r.time.endswith("+00:00")
    assert r.compression_ratio == pytest.approx(5.0)
    assert r.mask_kind == "none" and r.target_kind == "none"
    assert r.params is None and r.accuracy_top1 is None and r.artifacts is None
    assert r.artifacts_dict() == {} and r.extra_dict() == {}
    assert RunRecord(model="m", dataset="d", method="x").run_id != r.run_id


def test_json_fields_encoded():
    r = _full_record()
    assert isinstance(r.artifacts, str)
    assert r.artifacts_dict() == {"mask": "runs/a/mask.safetensors", "onnx": "runs/a/model.onnx"}
    assert r.extra_dict()["iterations"] == 100
    with pytest.raises(HwpruneError, match="JSON object"):
        RunRecord(model="m", dataset="d", method="x", extra="[1, 2]")


@pytest.mark.parametrize(
    "over, match",
    [
        ({"mask_kind": "filter"}, "mask_kind"),
        ({"target_kind": "macs"}, "target_kind"),
        ({"density": 1.5}, "density"),
        ({"accuracy_top1": 91.0}, "accuracy_top1"),
        ({"density": 0.5, "compression_ratio": 3.0}, "compression_ratio"),
        ({"params": 1.5}, "params"),
        ({"params": True}, "params"),
        ({"density": "lots"}, "density"),
        ({"model": ""}, "model"),
    ],
)
def test_invalid_values_rejected(over, match):
    kw = {"model": "m", "dataset": "d", "method": "x", **over}
    with pytest.raises(HwpruneError, match=match) as info:
        RunRecord(**kw)
    assert "\n" not in str(info.value)


def test_from_dict_rejects_unknown_keys_in_one_line():
    data = _full_record().to_dict()
    data["latency_p99"] = 3.0
    data["bogus"] = 1
    with pytest.raises(HwpruneError) as info:
        RunRecord.from_dict(data)
    msg = str(info.value)
    assert "latency_p99" in msg and "bogus" in msg
    assert "\n" not in msg


def test_from_dict_missing_required():
    with pytest.raises(HwpruneError, match="dataset"):
        RunRecord.from_dict({"model": "m", "method": "x"})


def test_from_dict_of_csv_strings():
    r = RunRecord.from_dict({"model": "m", "dataset": "d", "method": "x", "params": "12", "density": "0.5"})
    assert r.params == 12 and isinstance(r.params, int)
    assert r.density == 0.5 and r.compression_ratio == 2.0
    assert r.flops is None


def test_current_git_sha_outside_repo(tmp_path):
    assert current_git_sha(tmp_path) is None


def test_current_git_sha_in_repo(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    try:
        git("init", "-q")
        (tmp_path / "f").write_text("x")
        git("add", "f")
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "m")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not usable here")
    sha = current_git_sha(tmp_path)
    assert sha is not None and len(sha) == 40 and int(sha, 16) >= 0


def test_results_package_does_not_import_torch():
    code = (
        "import sys, hwprune.results, hwprune.results.store, hwprune.results.schema\n"
        "s = hwprune.results.ResultsStore(sys.argv[1])\n"
        "s.load()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, os.devnull + ".missing.csv"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# -- store -------------------------------------------------------------------------------------


def test_round_trip_preserves_types(tmp_path):
    store = ResultsStore(tmp_path / "runs.csv")
    full = _full_record()
    sparse = RunRecord(model="lenet5", dataset="digits", method="magnitude", mask_kind="weight")
    zero = RunRecord(model="m", dataset="d", method="x", density=0.0, params=0, seed=-3, target_value=0.0)
    for r in (full, sparse, zero):
        store.append(r)
    back = store.records()
    assert back == [full, sparse, zero]
    assert isinstance(back[0].params, int) and isinstance(back[0].flops, int)
    assert isinstance(back[0].latency_ms_median, float)
    assert back[0].latency_ms_median == full.latency_ms_median  # exact, not approximately
    assert back[1].density is None and back[1].notes is None and back[1].flops is None
    assert back[2].params == 0 and back[2].density == 0.0 and back[2].compression_ratio is None


def test_carriage_returns_and_separators_round_trip(tmp_path):
    store = ResultsStore(tmp_path / "runs.csv")
    tricky = ["a\rb", "\r", "x\r\ny", 'q"uote', "c,omma", " lead", "trail "]
    for note in tricky:
        store.append(RunRecord(model="m", dataset="d", method="x", notes=note))
    assert [r.notes for r in store.records()] == tricky
    assert store.load()["notes"].tolist() == tricky


def test_load_dataframe(tmp_path):
    store = ResultsStore(tmp_path / "runs.csv")
    store.append(_full_record())
    store.append(RunRecord(model="m", dataset="d", method="x"))
    df = store.load()
    assert list(df.columns) == COLUMNS
    assert len(df) == 2
    assert str(df["params"].dtype) == "Int64"
    assert str(df["density"].dtype) == "float64"
    assert df["params"].iloc[0] == 123_456 and df["params"].isna().iloc[1]
    assert df["flops"].iloc[0] == 10_000_000_000_000
    assert df["model"].tolist() == ["resnet20", "m"]
    assert json.loads(df["artifacts"].iloc[0])["onnx"] == "runs/a/model.onnx"
    # a DataFrame row converts back to the same record
    assert RunRecord.from_dict(df.iloc[1].to_dict()) == store.records()[1]
    assert RunRecord.from_dict(df.iloc[0].to_dict()) == store.records()[0]


def test_csv_header_is_columns(tmp_path):
    path = tmp_path / "runs.csv"
    ResultsStore(path).append(_full_record())
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == COLUMNS
    assert len(rows) == 2 and len(rows[1]) == len(COLUMNS)
    assert set(rows[0]) == {f.name for f in dataclasses.fields(RunRecord)}


def test_missing_file_loads_empty(tmp_path):
    store = ResultsStore(tmp_path / "nope.csv")
    df = store.load()
    assert list(df.columns) == COLUMNS and len(df) == 0
    assert store.records() == []
    assert not (tmp_path / "nope.csv").exists()


def test_empty_file_gets_header(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("")
    ResultsStore(path).append(RunRecord(model="m", dataset="d", method="x"))
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert len(ResultsStore(path).records()) == 1


def test_creates_parent_directories(tmp_path):
    path = tmp_path / "a" / "b" / "runs.csv"
    ResultsStore(path).append(RunRecord(model="m", dataset="d", method="x"))
    assert len(ResultsStore(path).records()) == 1


def test_header_mismatch_raises(tmp_path):
    path = tmp_path / "old.csv"
    old = ",".join([c for c in COLUMNS if c != "latency_ms_iqr"] + ["latency_p90"]) + "\nx\n"
    path.write_text(old)
    store = ResultsStore(path)
    with pytest.raises(HwpruneError) as info:
        store.append(RunRecord(model="m", dataset="d", method="x"))
    msg = str(info.value)
    assert "\n" not in msg
    assert "schema version" in msg and "latency_ms_iqr" in msg and "latency_p90" in msg
    assert path.read_text() == old  # untouched
    with pytest.raises(HwpruneError, match="schema version"):
        store.load()


def test_append_rejects_non_record(tmp_path):
    with pytest.raises(HwpruneError, match="RunRecord"):
        ResultsStore(tmp_path / "r.csv").append({"model": "m"})  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_path_under_a_file_raises_and_creates_nothing(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("i am a file")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for path in (blocker / "runs.csv", blocker / "sub" / "dir" / "runs.csv"):
        with pytest.raises(HwpruneError) as info:
            ResultsStore(path).append(RunRecord(model="m", dataset="d", method="x"))
        assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert blocker.read_text() == "i am a file"


def test_path_is_a_directory_raises(tmp_path):
    with pytest.raises(HwpruneError, match="directory"):
        ResultsStore(tmp_path).append(RunRecord(model="m", dataset="d", method="x"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_directory_raises_and_creates_nothing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for path in (ro / "runs.csv", ro / "new" / "runs.csv"):
            with pytest.raises(HwpruneError) as info:
                ResultsStore(path).append(RunRecord(model="m", dataset="d", method="x"))
            assert "\n" not in str(info.value)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_torn_last_row_does_not_swallow_next(tmp_path):
    path = tmp_path / "runs.csv"
    store = ResultsStore(path)
    store.append(RunRecord(model="m", dataset="d", method="x", run_id="first"))
    with open(path, "rb+") as f:  # simulate a crash that cut the last row short
        f.truncate(os.path.getsize(path) - 5)
    store.append(RunRecord(model="m", dataset="d", method="x", run_id="second"))
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[-1][0] == "second" and len(rows[-1]) == len(COLUMNS)
    with pytest.raises(HwpruneError, match="row 2"):
        store.records()


def _append_many(path: str, worker: int, n: int) -> None:
    store = ResultsStore(path)
    for i in range(n):
        big = "x" * (97 * (i % 7)) + f",\n{worker}:{i}" * (i % 3)
        store.append(
            RunRecord(
                model=f"w{worker}",
                dataset="d",
                method="concurrent",
                seed=i,
                params=worker * 1000 + i,
                notes=big or None,
                extra={"worker": worker, "i": i},
            )
        )


def _expected_notes(worker: int, i: int) -> str | None:
    return ("x" * (97 * (i % 7)) + f",\n{worker}:{i}" * (i % 3)) or None


@pytest.mark.slow
def test_concurrent_appends_never_tear(tmp_path):
    path = str(tmp_path / "runs.csv")
    workers, per_worker = 4, 200
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, per_worker)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]

    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == COLUMNS
    assert rows.count(COLUMNS) == 1  # the header was written once
    assert len(rows) == 1 + workers * per_worker
    assert all(len(r) == len(COLUMNS) for r in rows)

    records = ResultsStore(path).records()
    assert len(records) == workers * per_worker
    assert len({r.run_id for r in records}) == len(records)
    seen = set()
    for r in records:
        w, i = r.extra_dict()["worker"], r.extra_dict()["i"]
        assert r.model == f"w{w}" and r.seed == i and r.params == w * 1000 + i
        assert r.notes == _expected_notes(w, i)
        seen.add((w, i))
    assert seen == {(w, i) for w in range(workers) for i in range(per_worker)}
    # each worker's rows appear in the order it wrote them
    for w in range(workers):
        assert [r.seed for r in records if r.model == f"w{w}"] == list(range(per_worker))


_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=30)
_opt_float = st.none() | st.floats(allow_nan=False, allow_infinity=False)
_opt_int = st.none() | st.integers(min_value=-(2**62), max_value=2**62)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    model=_text.filter(bool),
    notes=st.none() | _text,
    target_value=_opt_float,
    latency=_opt_float,
    params=_opt_int,
    seed=_opt_int,
    density=st.none() | st.floats(min_value=0.0, max_value=1.0),
)
def test_round_trip_property(tmp_path, model, notes, target_value, latency, params, seed, density):
    store = ResultsStore(tmp_path / f"prop-{os.getpid()}.csv")
    if os.path.exists(store.path):
        os.unlink(store.path)
    r = RunRecord(
        model=model,
        dataset="d",
        method="x",
        notes=notes,
        target_value=target_value,
        latency_ms_median=latency,
        params=params,
        seed=seed,
        density=density,
    )
    store.append(r)
    (back,) = store.records()
    expected = dataclasses.replace(r, notes=r.notes or None)  # "" and None are the same empty cell
    assert back == expected
