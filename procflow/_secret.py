"""Secret values: the child sees them, logs, errors and reprs never do."""

from __future__ import annotations

import os
from typing import Union

__all__ = ["Secret", "display_arg", "reveal"]

REDACTED = "***"


class Secret:
    """Wrap an argv item or environment value that must never be shown.

    >>> from procflow import Proc, Secret
    >>> p = Proc("curl", "-H", Secret("Authorization: Bearer abc"))
    >>> "abc" in repr(p)
    False
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | bytes | os.PathLike[str] | int) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if isinstance(value, bool) or not isinstance(value, (str, bytes, int, os.PathLike)):
            raise TypeError(f"Secret takes str, bytes, os.PathLike or int, not {type(value).__name__}")
        self._value: str | bytes | os.PathLike[str] | int = value

    def reveal(self) -> str | bytes:
        """The real value, as the child receives it."""
        v = self._value
        if isinstance(v, int):
            return str(v)
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        return v

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


ArgItem = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]", int, Secret]


def reveal(item: ArgItem) -> str | bytes:
    """The value that goes to the child."""
    if isinstance(item, Secret):
        return item.reveal()
    if isinstance(item, int):
        return str(item)
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    return item


def display_arg(item: ArgItem) -> str:
    """The value as shown in logs, errors and reprs."""
    if isinstance(item, Secret):
        return REDACTED
    v = reveal(item)
    if isinstance(v, bytes):
        return os.fsdecode(v) if _decodable(v) else v.decode("utf-8", "backslashreplace")
    return v


def _decodable(v: bytes) -> bool:
    try:
        v.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
