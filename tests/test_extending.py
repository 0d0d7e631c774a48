"""docs/extending.md runs as written: each worked example adds one registry entry and uses it."""

import re
from pathlib import Path

from hwprune.latency import BACKENDS
from hwprune.prune.importance import CHANNEL_IMPORTANCES

ROOT = Path(__file__).resolve().parents[1]


def test_extending_page_examples_run_as_written(monkeypatch):
    # the examples register for real: on copies of the registries, so other tests never see them
    monkeypatch.setattr(BACKENDS, "_items", dict(BACKENDS._items))
    monkeypatch.setattr(CHANNEL_IMPORTANCES, "_items", dict(CHANNEL_IMPORTANCES._items))
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs/extending.md").read_text(), flags=re.S)
    assert len(blocks) == 2
    namespace = {"__name__": "__docs__"}
    exec(compile(blocks[0], "<extending: backend>", "exec"), namespace)  # noqa: S102 (our own documentation)
    assert "torch-nograd" in BACKENDS and namespace["result"].report.outcome.backend == "torch-nograd"
    assert all(int(k.sum()) % 4 == 0 for k in namespace["result"].mask.keep.values())  # its round_to
    exec(compile(blocks[1], "<extending: importance>", "exec"), namespace)  # noqa: S102
    assert "l1_times_bn" in CHANNEL_IMPORTANCES and namespace["result"].met
    assert namespace["result"].mask.meta["method"] == "l1_times_bn"
