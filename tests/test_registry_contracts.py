"""Contracts of the op-handler and command registries, checked on every entry.

The other registries have theirs beside their tests (backends: test_backend_contract.py, importances:
test_importance.py, weight scorers: test_scorers.py, models: test_models.py, datasets: test_data.py).
Each contract comes with a negative control: a deliberately bad entry it must refuse.
"""

import argparse
import inspect
import re

import onnx
import pytest
import torch
from torch import nn

from hwprune.cli import _build_parser
from hwprune.cli.registry import COMMANDS, Command
from hwprune.graph_mapper import fx_mapper  # noqa: F401  (registers every fx handler, attention included)
from hwprune.graph_mapper.onnx_ops import DEFAULT_DOMAINS, ONNX_OPS
from hwprune.graph_mapper.ops import COMPOSITE_RESIZERS, OPS
from hwprune.registry import key_name


def _takes(fn, n: int) -> bool:
    """``fn`` can be called with ``n`` positional arguments."""
    try:
        inspect.signature(fn).bind(*([None] * n))
    except TypeError:
        return False
    return True


# a module type of a library hwprune does not import, by qualified name (transformers.pytorch_utils.Conv1D)
QUALIFIED_TYPE = re.compile(r"[a-z_][\w]*(\.[a-z_]\w*)+\.[A-Z]\w*")


def fx_entry_problem(key, handler) -> str | None:
    """Why an fx op-handler entry breaks the contract (None when it keeps it)."""
    module_type = isinstance(key, type) or (isinstance(key, str) and QUALIFIED_TYPE.fullmatch(key) is not None)
    if isinstance(key, str) and not module_type:
        if not callable(getattr(torch.Tensor, key, None)):
            return f"{key!r} is not a torch.Tensor method"
    elif isinstance(key, type):
        if not issubclass(key, nn.Module):
            return f"{key.__qualname__} is not an nn.Module type"
    elif not callable(key) and not module_type:
        return f"{key!r} is neither a method name, a module type nor a function"
    if not _takes(handler, 2):
        return f"handler of {key!r} does not take (ctx, node)"
    resize = getattr(handler, "resize", None)
    if resize is not None:
        if not module_type:
            return f"handler of {key!r} has a compaction step but its op owns no module to resize"
        if not _takes(resize, 2):
            return f"compaction step of {key!r} does not take (module, shrunk)"
    return None


def onnx_entry_problem(op_type, handler) -> str | None:
    """Why an ONNX op-handler entry breaks the contract (None when it keeps it)."""
    domain, _, name = op_type.rpartition("::")
    if (domain or "") in DEFAULT_DOMAINS and not onnx.defs.has(name):
        return f"{op_type!r} is not an ONNX operator"
    if not _takes(handler, 2):
        return f"handler of {op_type!r} does not take (ctx, node)"
    resize = getattr(handler, "resize", None)
    if resize is not None and not _takes(resize, 3):
        return f"compaction step of {op_type!r} does not take (node, old_shapes, new_shapes)"
    return None


@pytest.mark.parametrize("key", OPS.keys(), ids=[key_name(k) for k in OPS.keys()])
def test_fx_op_handler_contract(key):
    assert fx_entry_problem(key, OPS.find(key)) is None


@pytest.mark.parametrize("op_type", ONNX_OPS.keys())
def test_onnx_op_handler_contract(op_type):
    assert onnx_entry_problem(op_type, ONNX_OPS.find(op_type)) is None


def test_op_handler_contracts_refuse_bad_entries():
    def handler(ctx, node):
        return None

    assert "not a torch.Tensor method" in fx_entry_problem("premute", handler)  # a typo never matches an op
    assert "not a torch.Tensor method" in fx_entry_problem("transformers.pytorch_utils.conv1d", handler)
    assert "not an nn.Module type" in fx_entry_problem(int, handler)
    assert "does not take (ctx, node)" in fx_entry_problem(nn.ReLU, lambda ctx: None)
    handler.resize = lambda module, shrunk: None
    assert "owns no module" in fx_entry_problem(torch.relu, handler)
    assert fx_entry_problem(nn.ReLU, handler) is None
    assert "not an ONNX operator" in onnx_entry_problem("Convv", handler)
    assert "(node, old_shapes, new_shapes)" in onnx_entry_problem("Conv", handler)


@pytest.mark.parametrize("key", COMPOSITE_RESIZERS.keys())
def test_composite_resizer_contract(key):
    assert QUALIFIED_TYPE.fullmatch(key) and _takes(COMPOSITE_RESIZERS.find(key), 2)
    assert OPS.find(key) is None  # a leaf's compaction step belongs to its handler


def test_module_types_with_channel_counts_update_them():
    # every built-in module handler whose module keeps a channel count carries the step that updates it
    counting = {nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.PReLU}
    counting |= {nn.MultiheadAttention}
    assert all(hasattr(OPS.find(t), "resize") for t in counting)


def command_problem(command: Command) -> str | None:
    """Why a command breaks the contract (None when it keeps it)."""
    if not re.fullmatch(r"[a-z][a-z0-9]*(-[a-z0-9]+)*", command.name):
        return f"{command.name!r} is not a lower-case, hyphenated command name"
    if not command.help or command.help != command.help.strip() or not command.help.endswith("."):
        return f"{command.name}: help must be one sentence ending in a period"
    parser = argparse.ArgumentParser(prog=f"hwprune {command.name}")
    command.add_arguments(parser)
    dests = {a.dest for a in parser._actions}
    missing = [r for r in command.required if r not in dests]
    if missing:
        return f"{command.name}: required option(s) {missing} are not among its options"
    undocumented = [
        a.option_strings[0] for a in parser._actions if a.option_strings and a.dest != "help" and not a.help
    ]
    if undocumented:
        return f"{command.name}: option(s) {undocumented} have no help"
    if not _takes(command.run, 1) or (command.check is not None and not _takes(command.check, 1)):
        return f"{command.name}: run and check take the parsed arguments"
    return None


@pytest.mark.parametrize("name", COMMANDS.names())
def test_command_contract(name):
    assert command_problem(COMMANDS.get(name)) is None
    _build_parser()  # every command's options coexist with the global ones


def test_command_contract_refuses_bad_entries():
    def options(parser):
        parser.add_argument("--model", help="model name")

    good = Command("count-groups", "Count groups.", options, lambda args: 0, required=("model",))
    assert command_problem(good) is None
    assert "hyphenated" in command_problem(Command("Count_Groups", "Count groups.", options, lambda args: 0))
    assert "period" in command_problem(Command("count", "count groups", options, lambda args: 0))
    assert "required" in command_problem(Command("count", "Count.", options, lambda args: 0, required=("data",)))
    assert "no help" in command_problem(Command("count", "Count.", lambda p: p.add_argument("--x"), lambda a: 0))
