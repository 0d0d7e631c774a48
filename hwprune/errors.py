"""Errors users can act on.

Every error raised for bad input is a :class:`HwpruneError` whose message is one line saying what
is wrong and what to do. The CLI prints that line and exits with status 2; anything else is a bug,
reported in one line naming the stage it happened in (:func:`set_stage`), exit status 1.
"""

import argparse


class HwpruneError(Exception):
    """Bad input or an unmet precondition, explained in one line."""


class UnknownNameError(HwpruneError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class HwpruneWarning(UserWarning):
    """Something the user should know that does not stop the job (the CLI prints it as one line)."""


class MaskMismatchError(HwpruneError):
    """A mask does not fit the model or graph it is applied to."""


class VerificationError(HwpruneError):
    """A compacted model or ONNX file does not compute what the masked model computes."""


class EquivalenceError(VerificationError):
    """A comparison failed: the result differs from its reference by ``diff`` (relative)."""

    def __init__(self, message: str, diff: float = float("nan")) -> None:
        super().__init__(message)
        self.diff = diff


class DataNotFoundError(HwpruneError):
    """A dataset is not on disk where it was looked for."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UsageError(HwpruneError):
    """A command line argparse refused (unknown option, wrong type, missing value)."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a one-line :class:`UsageError` instead of usage text + exit.

    Subparsers made from it are OneLineParsers too; ``--help`` still prints the whole help.
    """

    def error(self, message: str):  # noqa: D102 (argparse's hook)
        raise UsageError(f"{message}; see `{self.prog} --help`")


_STAGE = ["starting"]


def set_stage(text: str) -> None:
    """Name what the command is doing now, for the one line an unexpected error prints."""
    _STAGE[0] = text


def current_stage() -> str:
    """What :func:`set_stage` last named."""
    return _STAGE[0]


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) turned into an exception, so cleanup runs as for Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
