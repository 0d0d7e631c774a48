"""Comparison tables from synthetic results stores (at-init sweeps, budget runs): means, stds, markdown, PNG."""

import csv
import statistics
import subprocess
import sys

import pytest

from hwprune.errors import HwpruneError
from hwprune.results import ResultsStore, RunRecord
from hwprune.results.budget_runs import budget_rows
from hwprune.results.compare import METRICS, aggregate, compare, sweep_rows

ACC = {("rand", 2): [0.5, 0.7], ("rand", 10): [0.1, 0.3], ("synflow", 2): [0.9, 0.8], ("synflow", 10): [0.6, 0.6]}


def _store(tmp_path):
    store = ResultsStore(tmp_path / "r.csv")
    for (method, c), accs in ACC.items():
        for seed, acc in enumerate(accs):
            store.append(
                RunRecord(
                    model="lenet5",
                    dataset="digits",
                    method=method,
                    mask_kind="weight",
                    target_kind="density",
                    target_value=c,
                    density=1 / c,
                    flops=1000 // c,
                    accuracy_top1=acc,
                    accuracy_top5=1.0,
                    seed=seed,
                    extra={
                        "compression_mode": "ratio",
                        "testing_seconds": 0.1 * (seed + 1),
                        "collapsed": method == "rand" and c == 10,
                        "layers": ["conv.weight", "fc.weight"],
                        "layer_density": {"fc.weight": 0.5 / c, "conv.weight": 1.0 / c},
                        "layer_flops": {"conv": 600 // c, "fc": 100 // c},
                    },
                )
            )
    store.append(RunRecord(model="lenet5", dataset="digits", method="other"))  # not a sweep row: ignored
    return store


def test_aggregate_means_and_stds(tmp_path):
    rows = sweep_rows(_store(tmp_path).records())
    assert len(rows) == 8
    cells = aggregate(rows, METRICS["accuracy"])
    for (method, c), accs in ACC.items():
        cell = cells[(float(c), method)]
        assert cell.mean == pytest.approx(100 * statistics.mean(accs))
        assert cell.std == pytest.approx(100 * statistics.stdev(accs))
        assert cell.n == 2


def test_compare_writes_tables_and_pngs(tmp_path):
    _store(tmp_path)
    out = tmp_path / "cmp"
    written = compare(tmp_path / "r.csv", out)
    md = (out / "lenet5_digits_ratio_accuracy.md").read_text()
    for text in ("Rand", "SynFlow", "| 2x |", "| 10x |", "60.00 ± 14.14", "60.00 ± 0.00"):
        assert text in md
    with open(out / "lenet5_digits_ratio_accuracy.csv") as fh:
        rows = {r["compression"]: r for r in csv.DictReader(fh)}
    assert float(rows["2"]["synflow_mean"]) == pytest.approx(85.0)
    for name in ("accuracy", "testing_time", "flops", "layer_sparsity"):
        png = out / f"lenet5_digits_ratio_{name}.png"
        assert png in written and png.stat().st_size > 1000
    layers = (out / "lenet5_digits_ratio_layer_sparsity.md").read_text()
    assert "| conv.weight | 90.00 | 90.00 |" in layers and layers.index("conv.weight") < layers.index("fc.weight")
    index = (out / "index.md").read_text()
    assert "Runs not ok" in index and "Rand at 10x collapsed" in index
    assert all(p.name in index for p in written)


def test_compare_does_not_import_torch():
    code = "import sys, hwprune.results.compare; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


BUDGET_RUNS = {  # (method, target) -> (shipped latency ratio, final top-1)
    ("l1", 0.5): (0.51, 0.95),
    ("l1", 0.3): (0.31, 0.90),
    ("taylor", 0.5): (0.49, 0.97),
}


def _budget_store(tmp_path):
    store = ResultsStore(tmp_path / "b.csv")
    for (method, target), (ratio, top1) in BUDGET_RUNS.items():
        store.append(
            RunRecord(
                model="resnet18",
                dataset="digits",
                method=method,
                mask_kind="channel",
                target_kind="latency",
                target_value=target,
                flops=int(400 * target),
                flops_before=1000,
                params=50,
                params_before=100,
                accuracy_top1=top1,
                extra={"measured_ratio": ratio, "status": "met", "top1_dense": 0.98},
            )
        )
    # no accuracy (prune without data): not a comparable run, left out
    store.append(RunRecord(model="resnet18", dataset="none", method="l1", target_kind="latency", target_value=0.5))
    return store


def test_budget_runs_are_tabulated_with_accuracy_against_measured_latency(tmp_path):
    rows = budget_rows(_budget_store(tmp_path).records())
    assert len(rows) == 3
    by = {(r.method, r.target): r for r in rows}
    for key, (ratio, top1) in BUDGET_RUNS.items():
        assert by[key].latency_ratio == pytest.approx(ratio) and by[key].top1 == pytest.approx(top1)
        assert by[key].flops_ratio == pytest.approx(0.4 * key[1]) and by[key].params_ratio == pytest.approx(0.5)
    out = tmp_path / "cmp"
    written = compare(tmp_path / "b.csv", out)  # budget runs alone are enough to compare
    md = (out / "resnet18_digits_budget.md").read_text()
    assert "| taylor | latency 0.5 | 0.490 | 0.200 | 0.500 | 98.00 | 97.00 | met |" in md
    assert md.index("latency 0.3") < md.index("latency 0.5")  # ordered by target
    png = out / "resnet18_digits_accuracy_vs_latency.png"
    assert png in written and png.stat().st_size > 1000


def test_compare_refuses_a_store_without_sweeps_or_budget_runs_with_accuracy(tmp_path):
    store = ResultsStore(tmp_path / "c.csv")
    store.append(RunRecord(model="resnet18", dataset="none", method="l1", target_kind="latency", target_value=0.5))
    with pytest.raises(HwpruneError, match="no prune-at-init sweep rows and no budget runs"):
        compare(tmp_path / "c.csv", tmp_path / "out")
