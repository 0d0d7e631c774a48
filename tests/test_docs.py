"""The README's quick start and every example in docs/api.md run exactly as written."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def run_blocks(blocks, where, monkeypatch):
    monkeypatch.chdir(where)
    namespace = {"__name__": "__docs__"}
    for block in blocks:
        exec(compile(block, "<docs>", "exec"), namespace)  # noqa: S102 (our own documentation)
    return namespace


@pytest.mark.onnx
@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path, monkeypatch):
    [block] = python_blocks(ROOT / "README.md")
    ns = run_blocks([block], tmp_path, monkeypatch)
    assert ns["result"].report.target_kind == "latency"
    assert (tmp_path / "out/quickstart/resnet18_small.onnx").stat().st_size > 0


@pytest.mark.onnx
def test_api_page_examples_run_as_written(tmp_path, monkeypatch):
    blocks = python_blocks(ROOT / "docs/api.md")
    assert len(blocks) == 3
    ns = run_blocks(blocks, tmp_path, monkeypatch)
    assert ns["lut"].points and ns["report"].onnx_max_rel_diff <= 1e-4
    assert (tmp_path / "out/docs/mynet_pruned.onnx").stat().st_size > 0
    onnx_result = ns["result"]  # the last block: an ONNX file pruned to a FLOPs budget
    assert onnx_result.source == Path("out/docs/mynet.onnx") and onnx_result.report.target_kind == "flops"
    assert (tmp_path / "out/docs/mynet_smaller.onnx").stat().st_size < (tmp_path / "out/docs/mynet.onnx").stat().st_size
