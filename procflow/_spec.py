"""Immutable descriptions of one stage: where its streams go, its environment, its limits.

Nothing here opens a file or starts a thread: a spec is plain data, validated
when it is built, so every mistake surfaces at the builder call that made it.
"""

from __future__ import annotations

import io
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from ._secret import ArgItem, Secret, display_arg

__all__ = [
    "StageSpec",
    "InputSpec",
    "OutputSpec",
    "Callback",
    "check_argv_item",
    "check_seconds",
    "check_file",
    "OnceIterator",
]

Callback = tuple[Callable[[Any], object], bool]  # (fn, lines)


class OnceIterator:
    """An iterator handed to ``.input()``: it can feed one run only."""

    def __init__(self, it: Iterator[Any]) -> None:
        self.it = it
        self._taken = False
        self._lock = threading.Lock()

    def take(self) -> Iterator[Any]:
        with self._lock:
            if self._taken:
                raise ValueError(
                    "the iterator given to .input() was already consumed by an earlier run; "
                    "pass a re-iterable (a list, a function returning a generator) to run again"
                )
            self._taken = True
        return self.it


InputKind = Literal["null", "inherit", "path", "fd", "stream", "bytes", "iter", "reiter"]
OutputKind = Literal["inherit", "null", "path", "fd", "stream", "capture", "redirect", "none"]


@dataclass(frozen=True)
class InputSpec:
    kind: InputKind = "null"
    value: Any = None  # path, fd/file, bytes, OnceIterator or iterable


@dataclass(frozen=True)
class OutputSpec:
    kind: OutputKind = "inherit"
    value: Any = None  # path, fd/file
    append: bool = False
    max_bytes: int | None = None  # for capture
    callbacks: tuple[Callback, ...] = ()
    explicit: bool = False  # set by the caller (a pipeline refuses to re-wire it)

    @property
    def needs_pump(self) -> bool:
        """Bytes must pass through Python: capture, callbacks or a Python stream."""
        return self.kind in ("capture", "stream") or bool(self.callbacks)

    @property
    def captures(self) -> bool:
        return self.kind == "capture"


@dataclass(frozen=True)
class StageSpec:
    argv: tuple[ArgItem, ...]
    stdin: InputSpec = InputSpec()
    stdout: OutputSpec = OutputSpec()
    stderr: OutputSpec = OutputSpec()
    encoding: str | None = None  # text mode when set
    errors: str = "replace"
    cwd: str | bytes | None = None
    env_ops: tuple[tuple[str, Any], ...] = ()
    pass_fds: tuple[int, ...] = ()
    timeout: float | None = None
    kill_grace: float = 2.0
    wait_delay: float = 1.0
    unchecked: bool = False
    pipe_size: int | None = None
    _id: object = field(default=None, compare=False)

    def with_(self, **changes: Any) -> StageSpec:
        return replace(self, **changes)

    @property
    def display_argv(self) -> tuple[str, ...]:
        return tuple(display_arg(a) for a in self.argv)

    def build_env(self) -> dict[str, str | bytes] | None:
        """The child's environment, or None to inherit the parent's unchanged."""
        if not self.env_ops:
            return None
        env: dict[Any, Any] = dict(os.environ)
        for op, arg in self.env_ops:
            if op == "clear":
                env.clear()
            elif op == "set":
                for k, v in arg:
                    env[k] = v.reveal() if isinstance(v, Secret) else v
            elif op == "remove":
                for k in arg:
                    env.pop(k, None)
        return env


def check_argv_item(item: object, what: str = "argv item") -> ArgItem:
    if isinstance(item, bool) or not isinstance(item, (str, bytes, os.PathLike, int, Secret)):
        raise TypeError(
            f"{what} must be str, bytes, os.PathLike, int or Secret, not {type(item).__name__}: {item!r}"
        )
    if isinstance(item, (str, bytes, os.PathLike, Secret)):
        raw = item.reveal() if isinstance(item, Secret) else os.fspath(item)
        if (b"\0" if isinstance(raw, bytes) else "\0") in raw:
            raise ValueError(f"{what} contains a NUL byte: {display_arg(item)!r}")
    return item


def check_seconds(value: object, name: str, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or v < 0 or (v == 0 and not allow_zero) or math.isinf(v):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
    return v


def check_fd(fd: int) -> int:
    if fd < 0:
        raise ValueError(f"invalid file descriptor {fd}")
    try:
        os.fstat(fd)
    except OSError as e:
        raise ValueError(f"invalid file descriptor {fd}: {e.strerror}") from None
    return fd


def check_file(obj: object, mode: Literal["r", "w"], method: str) -> tuple[Literal["fd", "stream"], Any]:
    """Classify what ``stdin_file``/``stdout_file``/``stderr_file`` got.

    Returns ``("fd", obj)`` when the child can be handed the descriptor
    directly, ``("stream", obj)`` when bytes must be pumped through Python
    (a ``procflow.pipe()`` end, ``io.BytesIO``...).
    """
    from ._pipes import PipeReader, PipeWriter  # the in-process pipe has no fd

    if isinstance(obj, bool):
        raise TypeError(f"{method}() takes a file object or a file descriptor, not bool")
    if isinstance(obj, int):
        return "fd", check_fd(obj)
    if isinstance(obj, (PipeReader, PipeWriter)):
        want = PipeReader if mode == "r" else PipeWriter
        if not isinstance(obj, want):
            raise ValueError(f"{method}() needs the {'reading' if mode == 'r' else 'writing'} end of a pipe")
        if obj.closed:
            raise ValueError(f"{method}() got a closed pipe end")
        return "stream", obj
    if getattr(obj, "closed", False) is True:
        raise ValueError(f"{method}() got a closed file: {obj!r}")
    fileno = getattr(obj, "fileno", None)
    if callable(fileno):
        try:
            fd = fileno()
        except (io.UnsupportedOperation, OSError, ValueError):
            fd = None
        if isinstance(fd, int):
            check_fd(fd)
            if isinstance(obj, io.IOBase) and (obj.writable() if mode == "w" else obj.readable()) is False:
                raise ValueError(f"{method}() got a file not open for {'writing' if mode == 'w' else 'reading'}")
            if mode == "w" and hasattr(obj, "flush"):
                # What the caller wrote must land before the child's bytes.
                obj.flush()
            return "fd", obj
    attr = "read" if mode == "r" else "write"
    if callable(getattr(obj, attr, None)):
        return "stream", obj
    raise TypeError(
        f"{method}() takes a file object with fileno() or {attr}(), a procflow pipe end, or an fd; "
        f"got {type(obj).__name__}"
    )


def fd_of(obj: Any) -> int:
    return obj if isinstance(obj, int) else int(obj.fileno())


def check_input(data: object) -> InputSpec:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return InputSpec("bytes", bytes(data))
    if isinstance(data, str):
        return InputSpec("bytes", data)  # encoded at run time, as .text() says
    if isinstance(data, (int, float, bool)) or data is None:
        raise TypeError(f".input() takes bytes, str or an iterable of bytes/str chunks, not {type(data).__name__}")
    if isinstance(data, (dict, set, frozenset)):
        raise TypeError(f".input() takes bytes, str or an iterable of chunks, not {type(data).__name__}")
    if isinstance(data, Iterator):
        return InputSpec("iter", OnceIterator(data))
    if isinstance(data, Iterable):
        return InputSpec("reiter", data)
    raise TypeError(f".input() takes bytes, str or an iterable of bytes/str chunks, not {type(data).__name__}")


def check_callback(fn: object, method: str) -> Callable[[Any], object]:
    if not callable(fn):
        raise TypeError(f"{method}() needs a callable, got {type(fn).__name__}")
    return fn


def check_max_bytes(max_bytes: object) -> int | None:
    if max_bytes is None:
        return None
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes must be an int or None, not {type(max_bytes).__name__}")
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be > 0, got {max_bytes}")
    return max_bytes


def check_path(path: object, method: str) -> str | bytes:
    if isinstance(path, (str, bytes, os.PathLike)):
        p = os.fspath(path)
        if not p:
            raise ValueError(f"{method}() got an empty path")
        return p
    raise TypeError(f"{method}() takes a path (str, bytes or os.PathLike), not {type(path).__name__}")
