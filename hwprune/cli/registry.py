"""The command registry: a command is its name, help, options, checks and run function, in one module."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from hwprune.registry import Registry


@dataclass(frozen=True)
class Command:
    """One ``hwprune`` subcommand.

    ``add_arguments`` adds its options to its parser; ``check`` validates every option and input file
    before any work (bad input: one line, exit 2); ``run`` does the work and returns the exit status
    (None: 0); ``required`` names options that must be given on the command line or in --config.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]
    check: Callable[[argparse.Namespace], None] | None = None
    required: tuple[str, ...] = ()


COMMANDS: Registry[Command] = Registry("command")


def register(command: Command) -> Command:
    """Add ``command`` to :data:`COMMANDS` (a second command of the same name is an error)."""
    COMMANDS.add(command.name, command)
    return command
