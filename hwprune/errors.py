"""Errors users can act on.

Every error raised for bad input is a :class:`HwpruneError` whose message is one line saying what
is wrong and what to do. The CLI prints that line and exits with status 2; anything else is a bug.
"""


class HwpruneError(Exception):
    """Bad input or an unmet precondition, explained in one line."""


class UnknownNameError(HwpruneError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MaskMismatchError(HwpruneError):
    """A mask does not fit the model or graph it is applied to."""


class VerificationError(HwpruneError):
    """A compacted model or ONNX file does not compute what the masked model computes."""


class DataNotFoundError(HwpruneError):
    """A dataset is not on disk where it was looked for."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
