"""What a latency budget is decided on, on every backend, and importances over the seeds' sample count."""

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import fx, nn

from hwprune.cli import main
from hwprune.export.compact import compact_model
from hwprune.export.onnx_export import export_onnx
from hwprune.latency.measurement import (
    LatencyRatio,
    Measurement,
    median_stderr,
    paired_ratio,
    pairs_precision,
    time_interleaved,
)
from hwprune.prune.importance import DEFAULT_T, channel_importance
from hwprune.prune.masks import ChannelMask
from hwprune.results import ResultsStore
from hwprune.workflow import ModelInput, budget_verdict, importance_batches, importance_scores
from hwprune.workflow import budget as budget_stage
from hwprune.workflow import ship as ship_stage
from hwprune.workflow.closed_loop import closed_loop
from hwprune.workflow.scoring import IMPORTANCE_BATCH
from tests.test_importance import chain, chain_channel, chain_group, hand_grads


def fake_measurement(samples_ms, backend="torch-cpu") -> Measurement:
    s = np.asarray(samples_ms, dtype=float)
    return Measurement(backend, float(np.median(s)), 0.0, s.size, 0, 1, 1, (1, 3, 8, 8), "cpu", "fake", {}, tuple(s))


# ------------------------------------------------------------------ the verdict and its figures


def test_paired_ratio_is_exact_on_a_constant_ratio_and_its_error_grows_with_noise():
    base = 10.0 + np.sin(np.arange(40))  # drift shared by both runners in a round
    exact, err = paired_ratio(fake_measurement(base), fake_measurement(base - 5.0))
    assert exact == pytest.approx(1 - 5.0 / np.median(base)) and err == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    noisy, noisy_err = paired_ratio(fake_measurement(base), fake_measurement(base - 5.0 + rng.normal(0, 1, 40)))
    assert abs(noisy - exact) < 0.1 and noisy_err > 0.01
    assert paired_ratio(fake_measurement([10.0]), fake_measurement([5.0]))[1] == float("inf")


@pytest.mark.parametrize(
    ("ratio", "ci95", "want"),
    [
        (0.505, 0.004, "met"),  # within 3 % of 0.5, interval +-0.004 < tolerance 0.015
        (0.55, 0.004, "missed"),  # 10 % off, precisely measured
        (0.50, 0.0196, "undecided"),  # on target, but +-0.0196 is wider than +-0.015: never "met"
        (0.60, 0.098, "undecided"),
        (0.50, float("inf"), "undecided"),
    ],
)
def test_budget_verdict(ratio, ci95, want):
    assert budget_verdict(ratio, ci95, target=0.5, tolerance=0.03) == want
    assert budget_verdict(ratio, ci95, target=0.5, tolerance=0.03, other_load=0.1) == want  # a quiet host
    # a busy host: contention biases the ratio without widening its interval, so nothing is decided on it
    assert budget_verdict(ratio, ci95, target=0.5, tolerance=0.03, other_load=0.9) == "undecided"


def session_pairs(ratios, noise=0.0, rounds=40, seed=0):
    """A LatencyRatio whose pairs time at exactly ``ratios`` (plus round-to-round noise of ``noise`` ms)."""
    rng = np.random.default_rng(seed)
    base = np.full(rounds, 10.0)
    return LatencyRatio(
        tuple(fake_measurement(base) for _ in ratios),
        tuple(fake_measurement(base * r + rng.normal(0, noise, rounds)) for r in ratios),
    )


def test_a_ratio_over_session_pairs_is_their_mean_with_a_student_t_interval():
    timing = session_pairs([0.50, 0.52, 0.54])
    assert [r for r, _ in timing.per_session] == pytest.approx([0.50, 0.52, 0.54], abs=1e-3)  # median-based
    assert timing.ratio == pytest.approx(0.52, abs=1e-3)
    # t(0.975, 2 df) = 4.3027; sd of the pairs 0.02: 4.3027 x 0.02 / sqrt(3)
    assert timing.ci95 == pytest.approx(4.3027 * 0.02 / np.sqrt(3), rel=0.02)
    one = session_pairs([0.5], noise=0.3)
    assert one.ci95 == pytest.approx(1.96 * one.per_session[0][1])  # one pair: its own rounds' interval
    # pairs that agree exactly still carry their rounds' noise: the interval never shrinks below it
    agreeing = session_pairs([0.5] * 4, noise=0.3)
    errors = np.array([e for _, e in agreeing.per_session])
    assert agreeing.ci95 >= 1.96 * np.sqrt(np.mean(errors**2) / 4) > 0


def test_one_session_pair_decides_what_the_spread_of_five_leaves_undecided():
    """Negative control: the first pair alone (0.48, precise) says missed; the five pairs' spread says undecided."""
    timing = session_pairs([0.48, 0.50, 0.52, 0.50, 0.50])
    first, first_err = timing.per_session[0]
    assert budget_verdict(first, 1.96 * first_err, target=0.5, tolerance=0.03) == "missed"
    assert timing.ratio == pytest.approx(0.50, abs=1e-3)
    assert timing.ci95 > 0.015  # t(4) x 0.0141 / sqrt(5) = 0.0176
    assert budget_verdict(timing.ratio, timing.ci95, target=0.5, tolerance=0.03) == "undecided"


def test_pooled_measurement_keeps_every_session_s_rounds():
    timing = session_pairs([0.5, 0.6], rounds=30)
    assert timing.candidate.samples == 60 and len(timing.candidate.samples_ms) == 60
    assert timing.candidate.median_ms == pytest.approx(np.median(timing.candidate.samples_ms))


def test_pairs_precision_is_the_standard_error_of_the_mean_over_pairs():
    rng = np.random.default_rng(1)
    samples = [list(10 + rng.normal(0, 0.5, 50)) for _ in range(4)]  # baseline, candidate, baseline, candidate
    errors = [median_stderr(np.subtract(samples[i], samples[i + 1])) / np.median(samples[i]) for i in (0, 2)]
    assert pairs_precision(samples) == pytest.approx(np.sqrt(np.mean(np.square(errors)) / 2))


@pytest.mark.onnx
def test_measure_ratio_times_fresh_sessions_interleaved_in_one_run(tmp_path, monkeypatch):
    """Each pair is a fresh (baseline, candidate) preparation; every runner gets the same rounds."""
    from hwprune.latency import backends

    model = chain().eval()
    x = torch.randn(1, 1, 2, 2)
    path = tmp_path / "chain.onnx"
    export_onnx(model, x, path, "dynamo")
    prepared = []
    real_prepare = backends.OrtCpu.prepare

    def counting_prepare(self, m, example, **kw):
        prepared.append(m)
        return real_prepare(self, m, example, **kw)

    monkeypatch.setattr(backends.OrtCpu, "prepare", counting_prepare)
    timing = backends.measure_ratio("ort-cpu", path, path, x, sessions=3, repeats=12, precision=None)
    assert prepared == [path] * 6
    assert len(timing.baselines) == len(timing.candidates) == 3
    assert {m.samples for m in (*timing.baselines, *timing.candidates)} == {12}
    assert np.isfinite(timing.ratio) and np.isfinite(timing.ci95)


@dataclasses.dataclass
class FakeSolution:
    ratio: float
    reachable: bool = True


@pytest.mark.parametrize(
    ("measurements", "iterations", "chosen"),
    [
        ([0.52, 0.506], 2, 0.506),  # +4 % goes on; +1.2 % is inside half the tolerance: stop
        ([0.514, 0.497], 2, 0.497),  # +2.8 % is inside the tolerance but near its edge: one more step
        ([0.514, 0.520, 0.519, 0.518, 0.517], 5, 0.514),  # never inside half: the closest one is kept
    ],
)
def test_closed_loop_aims_at_half_the_tolerance(measurements, iterations, chosen):
    figures = iter(measurements)
    sol, measured, steps = closed_loop(FakeSolution, lambda sol: next(figures), target=0.5, tolerance=0.03)
    assert len(steps) == iterations and measured == chosen
    assert [s["measured"] for s in steps] == measurements[:iterations]
    assert steps[0]["budget"] == 0.5 and all(0 < s["budget"] <= 1 for s in steps)


def test_closed_loop_stops_when_the_solver_cannot_reach_the_budget():
    sol, measured, steps = closed_loop(
        lambda budget: FakeSolution(budget, reachable=False), lambda sol: 0.7, target=0.5, tolerance=0.03
    )
    assert len(steps) == 1 and measured == 0.7


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="host load is read from /proc/stat (Linux)")
def test_other_load_counts_other_processes_not_our_own_work():
    import subprocess
    import sys
    import time

    from hwprune.latency.measurement import OtherLoad

    def spin(seconds):
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass

    with OtherLoad() as own:  # our own busy work (as a timed runner's) is not "other"
        spin(1.0)
    spinner = "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"
    child = subprocess.Popen([sys.executable, "-c", spinner])
    time.sleep(0.3)  # the child is up and spinning
    with OtherLoad() as busy:
        time.sleep(1.0)
    child.wait()
    assert own.cores is not None and busy.cores is not None
    assert busy.cores - own.cores > 0.5, (own.cores, busy.cores)  # one spinning process ~ one core more


def test_rounds_honour_repeats():
    calls = []

    def timer():
        calls.append(1)
        return 0.001

    assert [len(s) for s in time_interleaved([timer, timer], repeats=5)] == [5, 5]  # precise at once: no more
    assert [len(s) for s in time_interleaved([timer], repeats=3, precision=None)] == [3]
    rng = np.random.default_rng(0)
    noisy = time_interleaved([lambda: 0.001, lambda: rng.uniform(0, 0.002)], repeats=5, precision=1e-6)
    assert len(noisy[0]) == 25  # imprecise: rounds added up to 5x repeats


# ------------------------------------------------------------------ the shipped artifact decides


def prune_args(out, backend="ort-cpu", target="0.7"):
    return [
        "prune",
        "--model",
        "lenet5",
        "--input-size",
        "96",  # large enough that its convolutions, not the runtime's overhead, dominate
        "--latency",
        target,
        "--backend",
        backend,
        "--repeats",
        "5",
        "--sessions",
        "2",
        "--out",
        str(out),
        "--results",
        str(out.parent / "results.csv"),
    ]


def spy_measure(monkeypatch):
    """Record every measure_ratio() call the budget job makes (the backend, the models' types, the exporter)."""
    calls = []
    real = ship_stage.measure_ratio

    def spy(backend, baseline, candidate, example, **kw):
        models = [baseline, candidate]
        files = {m.name: hashlib.sha256(m.read_bytes()).hexdigest() for m in models if isinstance(m, Path)}
        timing = real(backend, baseline, candidate, example, **kw)
        calls.append({"backend": backend, "models": models, "exporter": kw.get("exporter"), "sha256": files,
                      "sessions": len(timing.candidates)})  # fmt: skip
        return timing

    for stage in (budget_stage, ship_stage):  # the closed loop and the shipped file's re-measurement
        monkeypatch.setattr(stage, "measure_ratio", spy)
    return calls


@pytest.mark.onnx
def test_ort_budget_is_decided_on_the_shipped_file_timed_afresh(tmp_path, monkeypatch, capsys):
    calls = spy_measure(monkeypatch)
    real_export = ship_stage.export_pruned
    out = tmp_path / "p"

    def export_then_ship_the_dense_model(model, graph, mask, example, onnx_path, **kw):
        """A negative control: the file that ships is the dense model, whatever the loop measured."""
        compacted, report = real_export(model, graph, mask, example, onnx_path, **kw)
        export_onnx(compact_model(graph, ChannelMask.full(graph)), example, onnx_path, report.exporter)
        return compacted, report

    rc = main(prune_args(out))
    [row] = ResultsStore(tmp_path / "results.csv").records()
    extra = json.loads(row.extra)
    final = calls[-1]
    shipped = out / "lenet5_pruned.onnx"  # the very file the user gets (timed before it is moved into place)
    assert final["sha256"][shipped.name] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    assert final["exporter"] == extra["exporter"] == "dynamo"  # the exporter of the loop and the LUT too
    assert all(c["exporter"] == "dynamo" for c in calls)
    assert extra["loop_ratio"] in [it["measured"] for it in extra["iterations"]]
    assert extra["measured_ratio"] != extra["loop_ratio"]  # an independent measurement, not the loop's best
    assert rc == {"met": 0, "missed": 1, "undecided": 3}[extra["status"]]
    assert json.loads((out / "lut.json").read_text())["meta"]["exporter"] == "dynamo"
    capsys.readouterr()

    monkeypatch.setattr(ship_stage, "export_pruned", export_then_ship_the_dense_model)
    rc = main([*prune_args(tmp_path / "q"), "--lut", str(out / "lut.json")])
    extra = json.loads(ResultsStore(tmp_path / "results.csv").records()[-1].extra)
    # the loop's candidate was fast, the shipped file is the dense model: the verdict follows the file
    assert extra["loop_ratio"] < 0.9 and abs(extra["measured_ratio"] - 1.0) < 0.15
    assert extra["status"] != "met" and rc != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"hwprune: {extra['status']}")  # missed; undecided when the host is busy


NO_CUDA = not torch.cuda.is_available()
ON_GPU = [pytest.mark.gpu, pytest.mark.skipif(NO_CUDA, reason="no CUDA device")]


@pytest.mark.parametrize(
    "backend",
    [
        "torch-cpu",
        pytest.param("xla", marks=pytest.mark.xla),
        pytest.param("cuda", marks=ON_GPU),
        pytest.param("ort-cuda", marks=[*ON_GPU, pytest.mark.onnx]),
    ],
)
def test_every_backend_prunes_to_a_latency_budget_through_the_cli(backend, tmp_path, monkeypatch, capsys):
    if backend == "xla":
        pytest.importorskip("torch_xla")
        monkeypatch.setenv("PJRT_DEVICE", "CPU")
    if backend == "ort-cuda":
        from hwprune.latency.backends import available_backends

        if "ort-cuda" not in available_backends():
            pytest.skip("onnxruntime has no CUDA provider here")
    calls = spy_measure(monkeypatch)
    out = tmp_path / "p"
    rc = main(prune_args(out, backend))
    text = capsys.readouterr().out
    [row] = ResultsStore(tmp_path / "results.csv").records()
    extra = json.loads(row.extra)
    assert rc == {"met": 0, "missed": 1, "undecided": 3}[extra["status"]]
    assert row.latency_backend == backend and row.latency_ms_median > 0 and row.latency_before_ms > 0
    assert extra["random_max_rel_diff"] < 1e-4 and extra["check_seed"] is not None  # the randomised proof ran
    assert calls and all(c["backend"] == backend and c["sessions"] == 2 for c in calls)  # --sessions 2
    if backend.startswith("ort"):  # ONNX files on both sides, the last one the shipped file
        assert f"{backend} latency of the shipped ONNX file" in text
        assert all(isinstance(c["models"][0], Path) for c in calls)  # the dense file, exported once
        shipped = out / "lenet5_pruned.onnx"
        assert calls[-1]["sha256"][shipped.name] == hashlib.sha256(shipped.read_bytes()).hexdigest()
    else:  # baseline and candidates in one form: GraphModules on both sides of every measurement
        assert f"{backend} latency of the compacted model" in text
        assert all(isinstance(m, fx.GraphModule) for c in calls for m in c["models"])
    lut = json.loads((out / "lut.json").read_text())["meta"]
    assert lut["backend"] == backend
    mask = ChannelMask.load(out / "mask.json")
    assert mask.meta["target_kind"] == "latency"
    assert (out / "lenet5_pruned.onnx").stat().st_size > 0


def test_a_noisy_measurement_is_undecided_never_met(tmp_path, monkeypatch, capsys):
    """On target, but the shipped file's timings spread too much to tell: exit 3 with a hint."""
    rng = np.random.default_rng(0)

    def noisy_time_shipped(backend, graph, compacted, onnx_path, example, exporter, threads, repeats, precision,
                           sessions):  # fmt: skip
        base = 10 + rng.normal(0, 2, 60)
        shipped = fake_measurement(base * 0.0 + 7.0 + rng.normal(0, 2, 60), backend)
        return LatencyRatio((fake_measurement(base, backend),), (shipped,))

    monkeypatch.setattr(ship_stage, "time_shipped", noisy_time_shipped)
    rc = main(prune_args(tmp_path / "p", "torch-cpu"))
    err = capsys.readouterr().err
    extra = json.loads(ResultsStore(tmp_path / "results.csv").records()[-1].extra)
    assert extra["status"] == "undecided" and rc == 3
    last = err.strip().splitlines()[-1]  # above it: the profiler's progress bar
    assert last.startswith("hwprune: undecided") and "more --sessions or --repeats" in last


@pytest.mark.parametrize(("other_load", "status", "rc"), [(0.05, "met", 0), (1.2, "undecided", 3)])
def test_a_busy_host_leaves_a_precise_measurement_undecided(other_load, status, rc, tmp_path, monkeypatch, capsys):
    """Precise and exactly on target (0.7): met on a quiet host; undecided when others loaded the CPU."""

    def precise_time_shipped(backend, graph, compacted, onnx_path, example, exporter, threads, repeats, precision,
                             sessions):  # fmt: skip
        base = fake_measurement(np.full(60, 10.0), backend)
        shipped = fake_measurement(np.full(60, 7.0), backend)
        return LatencyRatio((base,), (dataclasses.replace(shipped, other_load=other_load),))

    monkeypatch.setattr(ship_stage, "time_shipped", precise_time_shipped)
    assert main(prune_args(tmp_path / "p", "torch-cpu")) == rc
    extra = json.loads(ResultsStore(tmp_path / "results.csv").records()[-1].extra)
    assert extra["status"] == status and extra["other_load_cores"] == other_load
    if status == "undecided":
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert "other processes used 1.20 CPU cores" in last and "quiet machine" in last


# ------------------------------------------------------------------ gradient importances over imp-samples


def test_fisher_averages_squared_gradients_over_imp_samples_in_mini_batches():
    m = chain()
    m.fc = nn.Linear(8, 10)  # digits' ten classes
    torch.nn.init.normal_(m.fc.weight, generator=torch.Generator().manual_seed(3))
    job = ModelInput("chain", m, torch.randn(1, 1, 2, 2))
    graph = job.graph()
    group = chain_group(graph)
    data = importance_batches(job.example, "digits", None, samples=300)
    assert [len(y) for _, y in data] == [IMPORTANCE_BATCH, IMPORTANCE_BATCH, 300 - 2 * IMPORTANCE_BATCH]
    again = importance_batches(job.example, "digits", None, samples=300)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(data, again, strict=True))  # seeded

    got = importance_scores(job, graph, "fisher", "digits", samples=300)[group.id]
    _, g2 = hand_grads(m, data, DEFAULT_T)
    params = {n: p.detach() for n, p in m.named_parameters()}
    by_hand = [
        sum(float((chain_channel(params, k)[n] ** 2 * chain_channel(g2, k)[n]).sum()) for n in chain_channel(params, k))
        for k in (0, 1)
    ]
    np.testing.assert_allclose(got, by_hand, rtol=1e-5)
    # negative control: all 300 samples as one batch give the square of the mean gradient, not E[g²]
    one_batch = [(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))]
    single = channel_importance("fisher", m, graph, one_batch)[group.id]
    assert not np.allclose(single, by_hand, rtol=1e-3)


def test_mask_and_export_accept_data_for_gradient_importances(tmp_path, capsys):
    out = tmp_path / "m.json"
    args = ["--model", "lenet5", "--method", "fisher", "--data", "digits", "--imp-samples", "200"]
    assert main(["mask", *args, "--out", str(out)]) == 0
    mask = ChannelMask.load(out)
    assert mask.meta["imp_samples"] == 200 and mask.meta["data"] == "digits" and mask.pruned_groups()
    assert main(["export", *args, "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


@pytest.mark.onnx
def test_a_loop_step_timed_on_a_busy_host_is_timed_again(tmp_path, monkeypatch, capsys):
    calls = spy_measure(monkeypatch)
    verdicts = []

    def busy_once(load):  # the first step's first timing reads as contended, every later one as quiet
        verdicts.append(not verdicts)
        return verdicts[-1]

    monkeypatch.setattr(budget_stage, "host_busy", busy_once)
    out = tmp_path / "p"
    main(prune_args(out))
    loop_calls = len(calls) - 1  # the last call times the shipped file
    [row] = ResultsStore(tmp_path / "results.csv").records()
    steps = json.loads(row.extra)["iterations"]
    assert verdicts[:2] == [True, False] and loop_calls == len(steps) + 1  # one retake, then one timing a step
    assert all("other_load_cores" in step for step in steps)
