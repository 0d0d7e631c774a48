"""A key -> object registry filled by a decorator; one per extension point.

Keys are names (models, datasets, importances, backends, ONNX op types) or, for the fx op handlers, the
module type or function an op calls.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hwprune.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps keys to objects. Registering a key twice is an error, so plugins cannot shadow."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, *keys: object) -> Callable[[T], T]:
        """Decorator: register the object under every one of ``keys``."""

        def decorate(obj: T) -> T:
            for key in keys:
                self.add(key, obj)
            return obj

        return decorate

    def add(self, name: object, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            names = [k for k in self._items if isinstance(k, str)]
            close = difflib.get_close_matches(name, names, n=3) if isinstance(name, str) else []
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())})") from None

    def find(self, key: object) -> T | None:
        """The object under ``key``, or None (for lookups where absence is normal, e.g. an unhandled op)."""
        return self._items.get(key)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[object]:
        return iter(self.keys())

    def keys(self) -> list[object]:
        """Every key, sorted by its name (ties in registration order: the same order in every process)."""
        return sorted(self._items, key=key_name)

    def names(self) -> list[str]:
        """Every key as text, sorted (a type or function key shows its qualified name)."""
        return sorted(key_name(k) for k in self._items)


def key_name(key: object) -> str:
    """A key as text: a name as is, a type or function by its module and qualified name (never an address)."""
    if isinstance(key, str):
        return key
    qualname = getattr(key, "__qualname__", None)
    if qualname is None:
        return repr(key)
    return f"{getattr(key, '__module__', None) or type(key).__name__}.{qualname}"
