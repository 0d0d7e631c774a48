"""`hwprune <subcommand>`: one entry point over the library.

Options may also come from a JSON/YAML file (`--config FILE`); the command line overrides it.

Every option and input file is checked before any work starts (:mod:`hwprune.checks`); bad input
gets one line on stderr (``hwprune: error: ...``, what is wrong and what to do) and exit status 2,
an unexpected internal error one line naming the stage and exit status 1 (the traceback with the
global ``--debug``). Commands that write a folder (demo, prune) write it whole or not at all.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from hwprune import checks
from hwprune.cli.registry import COMMANDS
from hwprune.errors import (
    HwpruneError,
    HwpruneWarning,
    Interrupted,
    OneLineParser,
    current_stage,
    first_line,
    set_stage,
)

# subcommands with parsers of their own (their --help is theirs): hwprune NAME ARGS -> module.main(ARGS)
DELEGATED = {
    "prune-at-init": ("hwprune.at_init.cli", "prune at initialization, train, one results row per run (see --help)"),
    "compare": ("hwprune.results.cli", "tables and plots from the results store (see --help)"),
    "train": ("hwprune.train.__main__", "train / fine-tune a model with a mask enforced (see --help)"),
    "gate": (
        "hwprune.prune.gating.cli",
        "GATOR channel gating with a FLOPs/memory/latency cost, then ship (see --help)",
    ),
}


def _build_parser() -> argparse.ArgumentParser:
    import hwprune

    parser = OneLineParser(
        prog="hwprune",
        description="Hardware-aware pruning: map channel groups, prune, compact, export verified ONNX, measure.",
        epilog="The same from Python, on your own module and weights (" + hwprune.__doc__.split("(", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="(before COMMAND) on an unexpected internal error, print its full traceback (also HWPRUNE_DEBUG=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in DELEGATED.items():
        sub.add_parser(name, help=help_, add_help=False)
    for name in COMMANDS.names():
        command = COMMANDS.get(name)
        p = sub.add_parser(name, help=command.help, description=command.help)
        p.add_argument("--config", default=None, help="JSON or YAML file of option values (CLI overrides)")
        command.add_arguments(p)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse, fold in --config, then check required options (which a config may supply)."""
    args = _apply_config(parser, argv)
    missing = [
        f"--{k.replace('_', '-')}" + (" (or --onnx)" if k == "model" and hasattr(args, "onnx") else "")
        for k in COMMANDS.get(args.command).required
        if getattr(args, k) is None and not (k == "model" and getattr(args, "onnx", None) is not None)
    ]
    if missing:
        raise HwpruneError(f"`hwprune {args.command}` needs {', '.join(missing)} (on the command line or in --config)")
    return args


def _apply_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; values from --config become the defaults, converted and checked like the CLI's."""
    args = _parse_all(parser, argv)
    if not getattr(args, "config", None):
        return args
    path = Path(args.config)
    values = checks.read_config(path)
    sub = parser._subparsers._group_actions[0].choices[args.command]  # the chosen subcommand
    known = {a.dest: a for a in sub._actions if a.option_strings and a.dest not in ("help", "config")}
    values = {k.replace("-", "_"): v for k, v in values.items() if k not in ("command", "config")}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise HwpruneError(
            f"--config {path}: unknown option(s) {', '.join(unknown)} for `hwprune {args.command}` "
            f"(see `hwprune {args.command} --help`)"
        )
    sub.set_defaults(**{k: checks.config_value(known[k], k, v, path) for k, v in values.items()})
    return _parse_all(parser, argv)


def _parse_all(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, naming the subcommand's --help when an option is unknown to it."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        raise HwpruneError(
            f"unrecognized arguments: {' '.join(extra)}; see `hwprune {args.command} --help` for its options"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 on bad input (one line), 1 on an internal error (one line), 130 on ^C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("HWPRUNE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    set_stage("reading the command line")
    with _signals_as_interrupts(), _one_line_warnings():
        try:
            return _run(argv)
        except HwpruneError as exc:
            print(f"hwprune: error: {first_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:
            name = signal.Signals(exc.signum).name if isinstance(exc, Interrupted) else "SIGINT"
            print(
                f"hwprune: interrupted ({name}) while {current_stage()}; no partial output was left: rerun the "
                "same command to go on (a profile resumes from its journal)",
                file=sys.stderr,
            )
            return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
        except Exception as exc:  # a bug: one line, the traceback only when asked for
            if debug:
                traceback.print_exc()
            todo = "report it with the traceback above" if debug else "rerun with --debug for the traceback, report it"
            print(
                f"hwprune: internal error while {current_stage()}: {type(exc).__name__}: {first_line(exc)} "
                f"(a bug, not your input; {todo})",
                file=sys.stderr,
            )
            return 1


def _run(argv: list[str]) -> int:
    if argv and argv[0] in DELEGATED:
        import importlib

        set_stage(f"running hwprune {argv[0]}")
        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
    parser = _build_parser()
    args = _parse(parser, argv)
    command = COMMANDS.get(args.command)
    set_stage(f"checking the options of hwprune {args.command}")
    if command.check is not None:
        command.check(args)
    set_stage(f"running hwprune {args.command}")
    return command.run(args) or 0


@contextlib.contextmanager
def _one_line_warnings():
    """Print HwpruneWarnings as one line (``hwprune: warning: ...``), others as Python prints them."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, HwpruneWarning):
            print(f"hwprune: warning: {message}", file=sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


@contextlib.contextmanager
def _signals_as_interrupts():
    """SIGTERM and SIGHUP raise :class:`Interrupted` (a KeyboardInterrupt), so cleanup runs as for Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _load_commands() -> None:
    """Import every module of this package: each registers its commands, so a new command is one new file."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name not in ("registry", "options", "__main__"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_commands()
