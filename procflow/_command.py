"""Proc and Pipeline: immutable builders, and the calls that run them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from ._cancel import Cancel
from ._exec import Execution
from ._result import Result
from ._running import Running
from ._secret import Secret, display_arg
from ._spec import (
    InputSpec,
    OutputSpec,
    StageSpec,
    check_argv_item,
    check_callback,
    check_fd,
    check_file,
    check_input,
    check_max_bytes,
    check_path,
    check_seconds,
)
from ._streams import ChunkIterator, LineIterator, StdinWriter, StdoutReader
from ._supervisor import Supervisor, current_supervisor

__all__ = ["Proc", "Pipeline", "Command"]

C = TypeVar("C", bound="Command")
_FIRST, _LAST, _ALL = "first", "last", "all"


def _check_run_args(cancel: object, supervisor: object) -> tuple[Cancel | None, Supervisor]:
    if cancel is not None and not isinstance(cancel, Cancel):
        raise TypeError(f"cancel must be a procflow.Cancel or None, not {type(cancel).__name__}")
    if supervisor is not None and not isinstance(supervisor, Supervisor):
        raise TypeError(f"supervisor must be a procflow.Supervisor or None, not {type(supervisor).__name__}")
    return cancel, supervisor or current_supervisor()


class Command:
    """What Proc and Pipeline share: the builder methods and the running calls."""

    __slots__ = ("_stages",)
    _stages: tuple[StageSpec, ...]

    def _new(self: C, stages: tuple[StageSpec, ...]) -> C:
        obj = object.__new__(type(self))
        object.__setattr__(obj, "_stages", stages)
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: builder methods return a new one")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: builder methods return a new one")

    def _apply(self: C, which: str, fn: Callable[[StageSpec], StageSpec]) -> C:
        stages = list(self._stages)
        idx = {_FIRST: [0], _LAST: [len(stages) - 1], _ALL: range(len(stages))}[which]
        for i in idx:
            stages[i] = fn(stages[i])
        return self._new(tuple(stages))

    # -- stdin ----------------------------------------------------------------
    def input(self: C, data: bytes | bytearray | memoryview | str | Iterable[bytes | str]) -> C:
        """Feed ``data`` to stdin from a feeder thread (bytes, str, or an iterable of chunks)."""
        spec = check_input(data)
        return self._apply(_FIRST, lambda s: s.with_(stdin=spec))

    def stdin_path(self: C, path: str | bytes | os.PathLike[str]) -> C:
        """Read stdin from a file (opened and closed by procflow)."""
        p = check_path(path, "stdin_path")
        return self._apply(_FIRST, lambda s: s.with_(stdin=InputSpec("path", p)))

    def stdin_file(self: C, file: Any) -> C:
        """Read stdin from a file object or fd (stays owned by the caller)."""
        kind, value = check_file(file, "r", "stdin_file")
        return self._apply(_FIRST, lambda s: s.with_(stdin=InputSpec(kind, value)))

    def stdin_null(self: C) -> C:
        """stdin is /dev/null (the default)."""
        return self._apply(_FIRST, lambda s: s.with_(stdin=InputSpec("null", explicit_marker)))

    def stdin_inherit(self: C) -> C:
        """stdin is the parent's own stdin."""
        return self._apply(_FIRST, lambda s: s.with_(stdin=InputSpec("inherit")))

    # -- stdout / stderr ---------------------------------------------------------
    def _out(self: C, stream: str, which: str, **changes: Any) -> C:
        def change(s: StageSpec) -> StageSpec:
            cur: OutputSpec = getattr(s, stream)
            new = OutputSpec(
                kind=changes.get("kind", cur.kind),
                value=changes.get("value"),
                append=changes.get("append", False),
                max_bytes=changes.get("max_bytes"),
                callbacks=changes.get("callbacks", cur.callbacks),
                explicit=True,
            )
            if "callbacks" in changes and "kind" not in changes:
                new = OutputSpec(cur.kind, cur.value, cur.append, cur.max_bytes, changes["callbacks"], True)
            other = s.stderr if stream == "stdout" else s.stdout
            if new.kind == "redirect" and other.kind == "redirect":
                raise ValueError("stdout_to_stderr() and stderr_to_stdout() together would form a loop")
            return s.with_(**{stream: new})

        return self._apply(which, change)

    def stdout_capture(self: C, max_bytes: int | None = None) -> C:
        """Capture stdout into ``Result.stdout`` (at most ``max_bytes``, else OutputLimitExceeded)."""
        return self._out("stdout", _LAST, kind="capture", max_bytes=check_max_bytes(max_bytes))

    def stdout_path(self: C, path: str | bytes | os.PathLike[str], append: bool = False) -> C:
        """Write stdout to a file (opened and closed by procflow)."""
        p = check_path(path, "stdout_path")
        return self._out("stdout", _LAST, kind="path", value=p, append=bool(append))

    def stdout_file(self: C, file: Any) -> C:
        """Write stdout to a file object or fd (stays owned by the caller)."""
        kind, value = check_file(file, "w", "stdout_file")
        return self._out("stdout", _LAST, kind=kind, value=value)

    def stdout_null(self: C) -> C:
        """Discard stdout."""
        return self._out("stdout", _LAST, kind="null")

    def stdout_to_stderr(self: C) -> C:
        """Send stdout wherever stderr goes (``1>&2``)."""
        return self._out("stdout", _LAST, kind="redirect")

    def stderr_capture(self: C, max_bytes: int | None = None) -> C:
        """Capture stderr into ``Result.stderr`` (each stage's, for a pipeline)."""
        return self._out("stderr", _ALL, kind="capture", max_bytes=check_max_bytes(max_bytes))

    def stderr_path(self: C, path: str | bytes | os.PathLike[str], append: bool = False) -> C:
        """Write stderr to a file. On a pipeline every stage appends to it."""
        p = check_path(path, "stderr_path")
        if len(self._stages) > 1:
            # Truncate once, then every stage appends: no stage overwrites another.
            return self._out("stderr", _ALL, kind="path", value=p, append=True)._truncate_first(p, append)
        return self._out("stderr", _ALL, kind="path", value=p, append=bool(append))

    def _truncate_first(self: C, p: Any, append: bool) -> C:
        if append:
            return self
        s0 = self._stages[0]
        first = s0.with_(stderr=OutputSpec("path", p, False, None, s0.stderr.callbacks, True))
        return self._new((first, *self._stages[1:]))

    def stderr_file(self: C, file: Any) -> C:
        """Write stderr to a file object or fd (stays owned by the caller)."""
        kind, value = check_file(file, "w", "stderr_file")
        return self._out("stderr", _ALL, kind=kind, value=value)

    def stderr_null(self: C) -> C:
        """Discard stderr."""
        return self._out("stderr", _ALL, kind="null")

    def stderr_to_stdout(self: C) -> C:
        """Send stderr wherever stdout goes (``2>&1``)."""
        return self._out("stderr", _ALL, kind="redirect")

    def on_stdout(self: C, fn: Callable[[Any], object], lines: bool = True) -> C:
        """Call ``fn(line)`` (or ``fn(chunk)`` with ``lines=False``) as stdout arrives."""
        check_callback(fn, "on_stdout")

        def add(s: StageSpec) -> StageSpec:
            out = s.stdout
            kind = "none" if (out.kind == "inherit" and not out.explicit) else out.kind
            new = OutputSpec(kind, out.value, out.append, out.max_bytes, (*out.callbacks, (fn, bool(lines))), True)
            return s.with_(stdout=new)

        return self._apply(_LAST, add)

    def on_stderr(self: C, fn: Callable[[Any], object], lines: bool = True) -> C:
        """Call ``fn(line)`` (or ``fn(chunk)``) as stderr arrives (every stage's)."""
        check_callback(fn, "on_stderr")

        def add(s: StageSpec) -> StageSpec:
            out = s.stderr
            kind = "none" if (out.kind == "inherit" and not out.explicit) else out.kind
            new = OutputSpec(kind, out.value, out.append, out.max_bytes, (*out.callbacks, (fn, bool(lines))), True)
            return s.with_(stderr=new)

        return self._apply(_ALL, add)

    # -- text, environment, limits -------------------------------------------------
    def text(self: C, encoding: str = "utf-8", errors: str = "replace") -> C:
        """Captured output becomes str; str input is encoded with ``encoding``."""
        import codecs

        if not isinstance(encoding, str) or not isinstance(errors, str):
            raise TypeError("encoding and errors must be str")
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"unknown encoding: {encoding!r}") from None
        try:
            codecs.lookup_error(errors)
        except LookupError:
            raise ValueError(f"unknown error handler: {errors!r}") from None
        return self._apply(_ALL, lambda s: s.with_(encoding=encoding, errors=errors))

    def cwd(self: C, path: str | bytes | os.PathLike[str]) -> C:
        """Run in this working directory (checked at spawn: a missing one is named)."""
        p = check_path(path, "cwd")
        return self._apply(_ALL, lambda s: s.with_(cwd=p))

    def env(self: C, **vars: str | Secret) -> C:
        """Set environment variables (values str or Secret)."""
        return self.env_update(vars)

    def env_update(self: C, mapping: Mapping[str, str | Secret]) -> C:
        """Set environment variables from a mapping."""
        if not isinstance(mapping, Mapping):
            raise TypeError(f"env_update() takes a mapping, not {type(mapping).__name__}")
        items: list[tuple[str, str | Secret]] = []
        for k, v in mapping.items():
            if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                raise ValueError(f"invalid environment variable name: {k!r}")
            if isinstance(v, Secret):
                raw = v.reveal()
                if isinstance(raw, bytes):
                    raw = os.fsdecode(raw)
                items.append((k, Secret(raw)))
                continue
            if isinstance(v, os.PathLike):
                v = os.fspath(v)
            if not isinstance(v, str):
                raise TypeError(f"environment value for {k!r} must be str or Secret, not {type(v).__name__}")
            if "\0" in v:
                raise ValueError(f"environment value for {k!r} contains a NUL byte")
            items.append((k, v))
        op = ("set", tuple(items))
        return self._apply(_ALL, lambda s: s.with_(env_ops=(*s.env_ops, op)))

    def env_remove(self: C, *names: str) -> C:
        """Remove variables from the child's environment."""
        for n in names:
            if not isinstance(n, str):
                raise TypeError(f"env_remove() takes names (str), not {type(n).__name__}")
        op = ("remove", tuple(names))
        return self._apply(_ALL, lambda s: s.with_(env_ops=(*s.env_ops, op)))

    def env_clear(self: C) -> C:
        """Start from an empty environment (later env() calls add to it)."""
        op = ("clear", ())
        return self._apply(_ALL, lambda s: s.with_(env_ops=(*s.env_ops, op)))

    def pass_fds(self: C, *fds: int | Any) -> C:
        """Keep these fds open in the child (all others are closed), e.g. a make jobserver."""
        out = []
        for fd in fds:
            if isinstance(fd, bool):
                raise TypeError("pass_fds() takes fds or file objects, not bool")
            if not isinstance(fd, int):
                fileno = getattr(fd, "fileno", None)
                if not callable(fileno):
                    raise TypeError(f"pass_fds() takes fds or file objects, not {type(fd).__name__}")
                fd = fileno()
            out.append(check_fd(fd))
        return self._apply(_ALL, lambda s: s.with_(pass_fds=tuple(sorted(set(s.pass_fds + tuple(out))))))

    def timeout(self: C, seconds: float) -> C:
        """Stop the whole tree after ``seconds`` and raise ProcTimeout."""
        t = check_seconds(seconds, "timeout")
        return self._apply(_ALL, lambda s: s.with_(timeout=t))

    def kill_grace(self: C, seconds: float) -> C:
        """Time between SIGTERM and SIGKILL when stopping the tree (default 2 s)."""
        g = check_seconds(seconds, "kill_grace", allow_zero=True)
        return self._apply(_ALL, lambda s: s.with_(kill_grace=g))

    def wait_delay(self: C, seconds: float) -> C:
        """After the child exits, how long to wait for EOF from descendants holding its pipes."""
        d = check_seconds(seconds, "wait_delay", allow_zero=True)
        return self._apply(_ALL, lambda s: s.with_(wait_delay=d))

    def unchecked(self: C) -> C:
        """A non-zero exit is returned in the Result instead of raised."""
        return self._apply(_ALL, lambda s: s.with_(unchecked=True))

    def pipe_size(self: C, size: int) -> C:
        """Ask for kernel pipes of ``size`` bytes between stages (F_SETPIPE_SZ, best effort)."""
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError("pipe_size() takes an int")
        if size <= 0:
            raise ValueError(f"pipe_size must be > 0, got {size}")
        return self._apply(_ALL, lambda s: s.with_(pipe_size=size))

    # -- composition ----------------------------------------------------------------
    def pipe(self, other: Command) -> Pipeline:
        """``self | other``: stdout of this into stdin of ``other`` through a kernel pipe."""
        if not isinstance(other, Command):
            raise TypeError(f"can only pipe into a Proc or Pipeline, not {type(other).__name__}")
        left, right = self._stages[-1], other._stages[0]
        if left.stdout.explicit:
            raise ValueError(
                f"cannot pipe from {_show(left)}: its stdout is already redirected ({left.stdout.kind})"
            )
        if right.stdin.kind != "null" or right.stdin.value is explicit_marker:
            raise ValueError(f"cannot pipe into {_show(right)}: its stdin is already set ({right.stdin.kind})")
        return Pipeline._from_stages(self._stages + other._stages)

    def __or__(self, other: Command) -> Pipeline:
        if not isinstance(other, Command):
            return NotImplemented
        return self.pipe(other)

    # -- running ------------------------------------------------------------------------
    def _execution(self, mode: str, cancel: object, supervisor: object) -> Execution:
        c, sup = _check_run_args(cancel, supervisor)
        # lines()/chunks()/reader() take stdout, writer() takes stdin: a setting they would
        # silently replace (a capture, a callback, a path, an .input()) is a mistake to name.
        if mode == "out" and self._stages[-1].stdout.explicit:
            out = self._stages[-1].stdout
            what = "on_stdout() callbacks" if out.callbacks and out.kind == "none" else f"stdout ({out.kind})"
            raise ValueError(f"lines()/chunks()/reader() read stdout themselves, but {_show(self._stages[-1])} "
                             f"already sends {what} elsewhere")
        first_in = self._stages[0].stdin
        if mode == "in" and (first_in.kind != "null" or first_in.value is explicit_marker):
            raise ValueError(f"writer() feeds stdin itself, but {_show(self._stages[0])} already has a stdin "
                             f"({first_in.kind})")
        ex = Execution(self._stages, mode, c, sup)
        ex.start()
        return ex

    def run(self, *, cancel: Cancel | None = None, supervisor: Supervisor | None = None) -> Result:
        """Run to the end and return the Result; raise ExitError on failure unless unchecked.

        >>> from procflow import Proc
        >>> Proc("echo", "hello").stdout_capture().run().stdout
        b'hello\\n'
        """
        ex = self._execution("run", cancel, supervisor)
        return ex.finish()

    def read(self, *, cancel: Cancel | None = None, supervisor: Supervisor | None = None) -> str:
        """Stdout captured and decoded, trailing newlines stripped, like ``$(...)``.

        >>> from procflow import Proc
        >>> Proc("echo", "hello").read()
        'hello'
        """
        last = self._stages[-1]
        cmd = self._apply(_LAST, lambda s: s.with_(stdout=OutputSpec("capture", callbacks=s.stdout.callbacks,
                                                                        max_bytes=s.stdout.max_bytes
                                                                        if s.stdout.kind == "capture" else None,
                                                                        explicit=True)))
        result = cmd.run(cancel=cancel, supervisor=supervisor)
        out = result.stdout
        if isinstance(out, bytes):
            out = out.decode(last.encoding or "utf-8", last.errors if last.encoding else "replace")
        return out.rstrip("\r\n") if out else ""

    def lines(self, *, cancel: Cancel | None = None, supervisor: Supervisor | None = None) -> LineIterator:
        """Iterate stdout line by line as it arrives (terminators stripped).

        >>> from procflow import Proc
        >>> with Proc("printf", "a\\nb\\n").lines() as lines:
        ...     list(lines)
        ['a', 'b']
        """
        last = self._stages[-1]
        ex = self._execution("out", cancel, supervisor)
        return LineIterator(ex, last.encoding or "utf-8", last.errors if last.encoding else "replace")

    def chunks(self, *, cancel: Cancel | None = None, supervisor: Supervisor | None = None) -> ChunkIterator:
        """Iterate raw stdout chunks (bytes) as they arrive."""
        return ChunkIterator(self._execution("out", cancel, supervisor))

    def reader(self, *, cancel: Cancel | None = None, supervisor: Supervisor | None = None) -> StdoutReader:
        """Read stdout as a binary stream; ``close()`` before EOF stops the run."""
        return StdoutReader(self._execution("out", cancel, supervisor))

    def writer(self, *, cancel: Cancel | None = None, supervisor: Supervisor | None = None) -> StdinWriter:
        """Write stdin as a binary stream; ``close()`` sends EOF, waits, raises ExitError on failure.

        >>> from procflow import Proc
        >>> with Proc("wc", "-c").stdout_capture().writer() as w:
        ...     _ = w.write(b"12345")
        >>> w.result.stdout.strip()
        b'5'
        """
        first = self._stages[0]
        ex = self._execution("in", cancel, supervisor)
        return StdinWriter(ex, first.encoding, first.errors)

    def start(self, *, cancel: Cancel | None = None, supervisor: Supervisor | None = None) -> Running:
        """Start and return at once; the caller owns the :class:`Running` handle."""
        return Running(self._execution("start", cancel, supervisor))

    # -- misc --------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Command) and type(other) is type(self) and other._stages == self._stages

    def __hash__(self) -> int:
        return hash((type(self), tuple(s.display_argv for s in self._stages)))

    def __reduce__(self) -> Any:
        raise TypeError(f"a {type(self).__name__} cannot be pickled")


explicit_marker = object()  # InputSpec("null") set by stdin_null(): explicit, not the default


def _show(spec: StageSpec) -> str:
    return "Proc(" + ", ".join(repr(a) for a in spec.display_argv) + ")"


class Proc(Command):
    """An immutable command: build it up, then run it (any number of times).

    >>> from procflow import Proc
    >>> Proc("sh", "-c", "echo out; echo err >&2").stdout_capture().stderr_capture().run().stderr
    b'err\\n'
    """

    __slots__ = ()

    def __init__(self, *argv: str | bytes | os.PathLike[str] | int | Secret) -> None:
        if not argv:
            raise ValueError("Proc() needs a program to run")
        if len(argv) == 1 and isinstance(argv[0], (list, tuple)):
            raise TypeError("Proc() takes the arguments themselves: Proc(*argv), not Proc(argv)")
        items = tuple(check_argv_item(a) for a in argv)
        if display_arg(items[0]) == "":
            raise ValueError("Proc() got an empty program name")
        object.__setattr__(self, "_stages", (StageSpec(argv=items),))

    @property
    def argv(self) -> tuple[str, ...]:
        """The command as shown in logs (Secret items as ``***``)."""
        return self._stages[0].display_argv

    def __repr__(self) -> str:
        return _show(self._stages[0])


class Pipeline(Command):
    """Stages connected stdout-to-stdin by kernel pipes: ``Proc("a") | Proc("b")``.

    >>> from procflow import Proc
    >>> (Proc("printf", "b\\na\\n") | Proc("sort")).read()
    'a\\nb'
    """

    __slots__ = ()

    def __init__(self, *procs: Command) -> None:
        if len(procs) < 2:
            raise ValueError("a Pipeline needs at least two stages")
        p = procs[0]
        for q in procs[1:]:
            p = p.pipe(q)
        object.__setattr__(self, "_stages", p._stages)

    @classmethod
    def _from_stages(cls, stages: Sequence[StageSpec]) -> Pipeline:
        obj = object.__new__(cls)
        object.__setattr__(obj, "_stages", tuple(stages))
        return obj

    @property
    def stages(self) -> tuple[Proc, ...]:
        """Each stage as a Proc (with its settings)."""
        out = []
        for s in self._stages:
            p = object.__new__(Proc)
            object.__setattr__(p, "_stages", (s,))
            out.append(p)
        return tuple(out)

    @property
    def argv(self) -> tuple[str, ...]:
        return self._stages[-1].display_argv

    def __repr__(self) -> str:
        return " | ".join(_show(s) for s in self._stages)
