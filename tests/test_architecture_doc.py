"""docs/architecture.md stays true to the code: every module, function and class it names exists."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("graph_mapper", "prune", "export", "latency", "results", "workflow", "models", "data", "train")


def named_objects() -> list[str]:
    text = (ROOT / "docs/architecture.md").read_text()
    pattern = r"`((?:" + "|".join(PACKAGES) + r")(?:\.\w+)+)`"
    names = re.findall(pattern, text)
    return sorted(set(names))


def resolve(dotted: str):
    """Import the longest module prefix of ``hwprune.<dotted>``, then follow attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module("hwprune." + ".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_page_names_code():
    assert len(named_objects()) >= 20  # the check reads the page (a broken pattern would find nothing)


@pytest.mark.parametrize("dotted", named_objects())
def test_every_name_on_the_architecture_page_exists(dotted):
    assert resolve(dotted) is not None
